import { describe, expect, test } from "bun:test";
import { createArtifactBudget } from "./artifact-budget.ts";

describe("the artifact budget", () => {
  test("files are counted until one would pass it; that one is refused and named, later small ones still fit", () => {
    const b = createArtifactBudget(10 << 20);
    expect(b.take("a.bin", 4 << 20)).toBeNull();
    expect(b.take("b.bin", 4 << 20)).toBeNull();
    expect(b.left()).toBe(2 << 20);
    expect(b.take("c.bin", 3 << 20)).toBe(
      "artifact c.bin (3 MiB) passes this job's artifact budget of 10 MiB (worker.artifact_budget); it was not kept",
    );
    expect(b.take("d.txt", 1 << 20)).toBeNull();
    expect(b.take("e.bin", 5 << 20)).toContain("e.bin");
    expect(b.message()).toContain("c.bin (3 MiB)");
  });

  test("uploading a name again replaces its size instead of adding to it", () => {
    const b = createArtifactBudget(1000);
    for (let i = 0; i < 50; i++) expect(b.take("progress.json", 600)).toBeNull();
    expect(b.left()).toBe(400);
    expect(b.message()).toBeNull();
  });

  test("a budget of zero refuses any byte, and an empty file still fits", () => {
    const b = createArtifactBudget(0);
    expect(b.take("empty", 0)).toBeNull();
    expect(b.take("one", 1)).toContain("budget of 0 B");
  });
});

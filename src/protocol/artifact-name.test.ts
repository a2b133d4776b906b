import { describe, expect, test } from "bun:test";
import { artifactNameProblem, isArtifactName } from "./artifact-name.ts";

describe("artifact names", () => {
  test("plain names and dir/file names are accepted", () => {
    for (const n of ["a", "blob.bin", "v1.2+deb_3-x", "d/f.txt", "a/b/c/d.tar.gz", `${"x".repeat(201)}`])
      expect(`${n}: ${artifactNameProblem(n)}`).toBe(`${n}: null`);
  });

  test("climbing, empty, absolute and hidden components are refused, one component at a time", () => {
    for (const n of [
      "..",
      "../x",
      "a/../b",
      "a/..",
      ".",
      "./a",
      "/etc/passwd",
      "a//b",
      "a/",
      "",
      ".hidden",
      "d/.x",
    ])
      expect(isArtifactName(n)).toBe(false);
  });

  test("control characters, spaces, backslashes and non-ASCII are refused anywhere", () => {
    for (const n of ["a\nb", "a\tb", "a b", "a\\b", "d/\u0000x", "caf\u00e9", "a\u202eb", "-dash", "d/-x"])
      expect(isArtifactName(n)).toBe(false);
  });

  test("too long a component, too long a name or too deep a path is refused", () => {
    expect(isArtifactName("x".repeat(202))).toBe(false);
    expect(isArtifactName(Array(41).fill("d").join("/"))).toBe(false);
    expect(isArtifactName(Array(40).fill("d").join("/"))).toBe(true);
    expect(artifactNameProblem(Array(6).fill("y".repeat(200)).join("/"))).toContain("at most 1024");
  });
});

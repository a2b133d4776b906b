import { expect, test } from "bun:test";
import type { JobView } from "../protocol/job.ts";
import { describeEnd, jobsTable, showText } from "./job-format.ts";

const job: JobView = {
  id: 7,
  name: "build",
  project: "default",
  channel: "default",
  arch: null,
  priority: 0,
  command: ["make", "all"],
  setup: null,
  state: "failed",
  reason: "exit",
  message: "exited with status 2",
  exitCode: 2,
  worker: "w1",
  slot: "slot-0",
  attempt: 1,
  retries: 0,
  createdAt: "2026-01-01T00:00:00.000Z",
  assignedAt: "2026-01-01T00:00:01.000Z",
  startedAt: "2026-01-01T00:00:01.000Z",
  finishedAt: "2026-01-01T00:01:31.000Z",
  timeoutMs: 30 * 60_000,
  resources: {
    memoryBytes: 2 * 1024 ** 3,
    cpus: 1.5,
    pids: null,
    scratchBytes: null,
    root: "host",
    writableRoot: false,
    needs: [],
    egress: [],
    peakMemoryBytes: null,
    cpuMs: null,
  },
  logSize: 1234,
  cancelRequested: false,
  repo: null,
  useRepos: [],
  retryOf: null,
  rebuildOf: null,
  reproducibility: null,
  recipe: null,
  secrets: [],
  progress: null,
  waitingFor: null,
  artifacts: [],
};

test("the show page has one line per field the job has, and none for the fields it lacks", () => {
  const lines = showText(job).split("\n");
  expect(lines[0]).toBe("job:         7 build");
  expect(lines).toContain("exit code:   2");
  expect(lines).toContain("worker:      w1/slot-0");
  expect(lines).toContain("command:     make all");
  expect(lines.find((l) => l.startsWith("limits:"))).toContain("cpus 1.5");
  for (const absent of ["peak memory:", "cpu time:", "retry of:", "recipe:", "progress:"])
    expect(lines.some((l) => l.startsWith(absent))).toBe(false);
});

test("the show page names the repositories a job uses and the one it publishes into", () => {
  const line = (j: JobView) =>
    showText(j)
      .split("\n")
      .find((l) => l.startsWith("repos:"));
  expect(line(job)).toBeUndefined();
  expect(line({ ...job, useRepos: ["tools", "base"], repo: "out" })).toBe(
    "repos:       uses tools, base; publishes into out",
  );
  expect(line({ ...job, useRepos: ["tools"] })).toBe("repos:       uses tools");
});

test("a hostile name and command cannot drive the terminal or add lines to the show page or the table", () => {
  const hostile = {
    ...job,
    name: "x\x1b[2J\x1b[31mred\nstate:       succeeded",
    command: ["sh", "-c", "echo \x1b]0;title\x07"],
  };
  const page = showText(hostile);
  expect(page).not.toContain("\x1b");
  expect(page).not.toContain("\x07");
  expect(page.split("\n").filter((l) => l.startsWith("state:"))).toEqual(["state:       failed"]);
  const rows = jobsTable([hostile, job], Date.parse("2026-01-01T00:02:00.000Z"));
  expect(rows).not.toContain("\x1b");
  expect(rows.split("\n")).toHaveLength(3);
  expect(jobsTable([])).toBe("no jobs");
});

test("a long script shows as its first line, cut at 160 characters, with its line count", () => {
  const script = `${"a".repeat(500)}${"\nb".repeat(5_000)}`;
  const line = showText({ ...job, command: ["/bin/sh", "-ec", script] })
    .split("\n")
    .find((l) => l.startsWith("command:"))!;
  expect(line.length).toBeLessThan(240);
  expect(line).toContain("(5001 lines)");
});

test("the end line names the reason and exit code, and a message only when the job did not succeed", () => {
  expect(describeEnd(job)).toBe("failed (exit 2): exited with status 2");
  expect(describeEnd({ ...job, state: "succeeded", reason: null, exitCode: 0, message: "ok" })).toBe(
    "succeeded",
  );
});

test("the end line escapes a message that carries a name the job chose", () => {
  const line = describeEnd({ ...job, message: "artifact budget passed by out/\x1b[31mred\nx" });
  expect(line).not.toContain("\x1b");
  expect(line).not.toContain("\n");
  expect(line).toContain("red");
});

import { expect, test } from "bun:test";
import type { RunResult } from "../runner/contract.ts";
import { outcomeOf } from "./outcome.ts";

const r = (exit: RunResult["exit"], limit: RunResult["limit"] = null): RunResult => ({
  exit,
  limit,
  peakMemoryBytes: 1,
  cpuMs: 2,
});
const none = { cancelled: false, timedOut: false };

test("exit statuses, signals and limits map to the states and reasons of SPEC.md", () => {
  expect(outcomeOf(r({ kind: "exit", code: 0 }), none)).toMatchObject({
    state: "succeeded",
    reason: null,
    exitCode: 0,
  });
  expect(outcomeOf(r({ kind: "exit", code: 2 }), none)).toMatchObject({
    state: "failed",
    reason: "exit",
    exitCode: 2,
  });
  expect(outcomeOf(r({ kind: "signal", signal: 9 }), none)).toMatchObject({
    state: "failed",
    reason: "signal",
  });
  expect(outcomeOf(r({ kind: "exit", code: 0 }, "oom"), none)).toMatchObject({
    state: "failed",
    reason: "oom",
  });
  expect(outcomeOf(r({ kind: "exit", code: 1 }, "pids"), none)).toMatchObject({
    state: "failed",
    reason: "pids",
  });
  expect(outcomeOf(r({ kind: "exit", code: 1 }, "no_space"), none)).toMatchObject({
    state: "failed",
    reason: "no_space",
  });
  expect(outcomeOf(r({ kind: "sandbox", message: "mount: EPERM" }), none)).toMatchObject({
    state: "failed",
    reason: "sandbox",
    message: "mount: EPERM",
  });
  expect(
    outcomeOf(r({ kind: "setup", message: "the setup exited with status 100", code: 100 }), none),
  ).toMatchObject({
    state: "failed",
    reason: "setup",
    exitCode: 100,
    message: "the setup exited with status 100",
  });
  // A setup that filled the scratch or ran out of memory says so, as a command would.
  expect(outcomeOf(r({ kind: "setup", message: "x", code: 1 }, "no_space"), none).reason).toBe("no_space");
  expect(outcomeOf(r({ kind: "signal", signal: 9 }), { cancelled: true, timedOut: false }).state).toBe(
    "cancelled",
  );
  expect(outcomeOf(r({ kind: "signal", signal: 9 }), { cancelled: false, timedOut: true }).state).toBe(
    "timed_out",
  );
  expect(outcomeOf(r({ kind: "exit", code: 0 }), none)).toMatchObject({ peakMemoryBytes: 1, cpuMs: 2 });
});

test("a job past its artifact budget fails with reason artifact_budget even after exit 0, saying which file", () => {
  const why = "artifact big.bin (9 MiB) passes this job's artifact budget of 8 MiB (worker.artifact_budget)";
  const o = outcomeOf({ ...r({ kind: "exit", code: 0 }, "artifact_budget"), limitMessage: why }, none);
  expect(o).toMatchObject({ state: "failed", reason: "artifact_budget", exitCode: 0, message: why });
  expect(outcomeOf(r({ kind: "exit", code: 0 }, "artifact_budget"), none).message).toBe(
    "its artifacts passed the worker's artifact budget",
  );
});

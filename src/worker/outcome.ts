import type { Outcome } from "../protocol/job.ts";
import type { RunResult } from "../runner/contract.ts";

/**
 * Failures of a runner's start that are the job's own doing (what it asked for cannot be had); any other
 * failure to start is the slot's.
 */
export const JOB_FAULTS = new Set([
  "SCRATCH_TOO_BIG",
  "NO_TEMPLATE",
  "TEMPLATE_BUILD_FAILED",
  "BAD_TEMPLATE",
  "ARTIFACT_FETCH",
  "SETUP_NEEDS_SANDBOX",
  "SETUP_NEEDS_TEMPLATE",
  "REPO_SOURCES_TOO_LARGE",
]);

/** Maps how a job ended to its state and reason (SPEC.md "Job states"). */
export function outcomeOf(r: RunResult, a: { cancelled: boolean; timedOut: boolean }): Outcome {
  const base = { peakMemoryBytes: r.peakMemoryBytes, cpuMs: r.cpuMs };
  if (a.timedOut)
    return {
      ...base,
      state: "timed_out",
      reason: null,
      exitCode: null,
      message: "the job ran past its timeout",
    };
  if (a.cancelled) return { ...base, state: "cancelled", reason: null, exitCode: null, message: "cancelled" };
  if (r.exit.kind === "sandbox")
    return { ...base, state: "failed", reason: "sandbox", exitCode: null, message: r.exit.message };
  if (r.limit) {
    const why = {
      oom: "killed: out of memory",
      pids: "hit its process limit",
      no_space: "its scratch space filled up",
      artifact_budget: "its artifacts passed the worker's artifact budget",
    }[r.limit];
    const exitCode = r.exit.kind === "exit" ? r.exit.code : null;
    return { ...base, state: "failed", reason: r.limit, exitCode, message: r.limitMessage ?? why };
  }
  if (r.exit.kind === "setup")
    return { ...base, state: "failed", reason: "setup", exitCode: r.exit.code, message: r.exit.message };
  if (r.exit.kind === "signal") {
    return {
      ...base,
      state: "failed",
      reason: "signal",
      exitCode: null,
      message: `killed by signal ${r.exit.signal}`,
    };
  }
  if (r.exit.code === 0) return { ...base, state: "succeeded", reason: null, exitCode: 0, message: null };
  return {
    ...base,
    state: "failed",
    reason: "exit",
    exitCode: r.exit.code,
    message: `exited with status ${r.exit.code}`,
  };
}

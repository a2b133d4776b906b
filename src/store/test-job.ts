import type { NewJob } from "./jobs.ts";

/**
 * A submitted job for tests and benchmarks that write to the store directly: `true` in project default on
 * channel default, no retries; `over` sets any other field.
 */
export function testJob(over: Partial<NewJob> = {}): NewJob {
  return {
    name: "t",
    project: "default",
    channel: "default",
    arch: null,
    priority: 0,
    command: ["true"],
    env: {},
    timeoutMs: 60_000,
    needs: [],
    egress: [],
    retries: 0,
    ...over,
  };
}

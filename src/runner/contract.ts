import type { SlotConfig } from "../config/schema.ts";
import type { JobSpec } from "../protocol/job.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import type { TemplateCache } from "../templates/cache.ts";
import type { ArtifactBudget } from "./artifact-budget.ts";

/**
 * A slot as the worker offers it: its `[[worker.slots]]` entry (the one slot type, from the config) and
 * its position among the worker's slots, which keys its uid on the host.
 */
export interface Slot extends SlotConfig {
  index: number;
}

/**
 * How the job's main process ended, before the worker turns it into a state and reason. A sandbox
 * failure is the job's own (a template it named would not build, a scratch bigger than allowed) unless
 * `slotFault` says the slot could not be set up: then the job never ran, goes back to the queue, and the
 * slot is held until an operator looks.
 */
export type RawExit =
  | { kind: "exit"; code: number }
  | { kind: "signal"; signal: number }
  | { kind: "sandbox"; message: string; slotFault?: boolean }
  /** The job's setup failed (its exit code, when it exited), so its command never ran. */
  | { kind: "setup"; message: string; code: number | null };

export interface RunResult {
  exit: RawExit;
  /**
   * A limit that explains the failure better than the exit status: read from the kernel's counters, or
   * the job's artifact budget, which fails the job even when it exited 0.
   */
  limit: "oom" | "pids" | "no_space" | "artifact_budget" | null;
  /** Says more about `limit` than its fixed sentence (which file passed the artifact budget). */
  limitMessage?: string | null;
  peakMemoryBytes: number | null;
  cpuMs: number | null;
}

export interface RunHandle {
  /** The host pid of the sandbox's init (for attach and artifact collection), when there is one. */
  pid?: number;
  /** Resolves once the job and everything it started are gone and the slot is clean again. */
  result: Promise<RunResult>;
  /** Kills the job's whole process tree now. Safe to call more than once. */
  kill(): void;
  /** Makes a template appear read-only at /kiln/templates/NAME inside the running job. */
  attachTemplate?(spec: TemplateSpec): Promise<void>;
}

export interface RunRequest {
  spec: JobSpec;
  slot: Slot;
  /** The job's private directory on the worker (its log, its outbox entry). */
  dir: string;
  /** Where stdout and stderr both go, so their interleaving is kept exactly. */
  logFd: number;
  /** The environment the job sees, already built by the worker. */
  env: Record<string, string>;
  /** The job's API proxy: a Unix socket on the host that the sandbox forwards to $KILN_API. */
  apiSocket: string | null;
  /** The job's artifact budget, shared with its API proxy's uploads; collection counts against it. */
  artifacts: ArtifactBudget;
}

/**
 * How the worker runs a job. The plain-process runner and the sandbox runner both implement it; the
 * worker never knows which one it holds.
 */
export interface Runner {
  readonly name: string;
  /** The runner's build-root template cache, when it can run jobs on templates. */
  readonly templates?: TemplateCache;
  /** Set by the worker: called when the template cache gained or lost a tree. */
  onTemplatesChanged?: () => void;
  start(req: RunRequest): Promise<RunHandle>;
  /** At worker start: removes whatever a crashed worker left behind (processes, mounts, cgroups...). */
  sweep(leftoverDirs: string[]): Promise<void>;
  /** At a clean stop, after every job ended: releases what the runner holds (slot cgroups). */
  stop?(): Promise<void>;
}

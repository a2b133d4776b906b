import { z } from "zod";
import { TemplateSpecSchema } from "./template.ts";

/** Job states exactly as SPEC.md names them. */
export const JOB_STATES = [
  "queued",
  "assigned",
  "running",
  "succeeded",
  "failed",
  "cancelled",
  "timed_out",
] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TERMINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled", "timed_out"];
export const isTerminal = (s: string) => (TERMINAL_STATES as readonly string[]).includes(s);

/** Why a job failed; see SPEC.md "Job states". */
export const REASONS = [
  "exit",
  "signal",
  "oom",
  "pids",
  "no_space",
  "artifact_budget",
  "lost",
  "sandbox",
  "rejected",
] as const;
export type Reason = (typeof REASONS)[number];

/** What a worker needs to run one attempt of a job. */
export const JobSpecSchema = z.object({
  id: z.number().int(),
  attempt: z.number().int(),
  name: z.string(),
  project: z.string(),
  command: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()),
  timeoutMs: z.number().int().positive(),
  memoryBytes: z.number().int().positive().nullable(),
  cpus: z.number().positive().nullable(),
  pids: z.number().int().positive().nullable(),
  scratchBytes: z.number().int().positive().nullable(),
  root: z.string(),
  /** The template behind `root` (null for the host root), resolved when the job was assigned. */
  template: TemplateSpecSchema.nullable().default(null),
  writableRoot: z.boolean().default(false),
  needs: z.array(z.string()),
  egress: z.array(z.string()),
});
export type JobSpec = z.infer<typeof JobSpecSchema>;

/** How an attempt ended, as the worker saw it. */
export const OutcomeSchema = z.object({
  state: z.enum(["succeeded", "failed", "cancelled", "timed_out"]),
  reason: z.enum(REASONS).nullable(),
  exitCode: z.number().int().nullable(),
  message: z.string().nullable(),
  peakMemoryBytes: z.number().int().nullable(),
  cpuMs: z.number().int().nullable(),
});
export type Outcome = z.infer<typeof OutcomeSchema>;

/** A job as the API and `--json` show it. */
export interface JobView {
  id: number;
  name: string;
  project: string;
  channel: string;
  arch: string | null;
  priority: number;
  command: string[];
  state: JobState;
  reason: Reason | null;
  message: string | null;
  exitCode: number | null;
  worker: string | null;
  slot: string | null;
  attempt: number;
  retries: number;
  createdAt: string;
  assignedAt: string | null;
  startedAt: string | null;
  finishedAt: string | null;
  timeoutMs: number;
  resources: {
    memoryBytes: number | null;
    cpus: number | null;
    pids: number | null;
    scratchBytes: number | null;
    root: string;
    writableRoot: boolean;
    needs: string[];
    egress: string[];
    peakMemoryBytes: number | null;
    cpuMs: number | null;
  };
  logSize: number;
  cancelRequested: boolean;
  retryOf: number | null;
  /** The recipe version the job was rendered from and the values it got; null for a plain job. */
  recipe: { name: string; version: number; vars: Record<string, string> } | null;
  progress: { percent: number; message: string | null } | null;
  waitingFor: string | null;
  artifacts: { name: string; size: number; sha256: string }[];
}

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const name = (what: string) =>
  z
    .string()
    .regex(
      NAME,
      `${what} must be 1-63 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit`,
    );

/**
 * The options of a submit that a recipe's `[submit]` table may also set. None has a default here, so the
 * master can tell "not given" (the recipe's value, then the built-in default applies) from "given" (wins).
 */
export const SubmitOptionsSchema = z
  .object({
    name: z.string().max(200).optional(),
    project: name("project").optional(),
    channel: name("channel").optional(),
    arch: name("arch").optional(),
    priority: z.number().int().min(-1000).max(1000).optional(),
    env: z
      .record(z.string().regex(ENV_KEY, "env names must be letters, digits and _"), z.string())
      .optional(),
    timeoutMs: z.number().int().positive().optional(),
    memoryBytes: z
      .number()
      .int()
      .min(4 << 20, "memory must be at least 4M")
      .optional(),
    cpus: z.number().positive().max(1024).optional(),
    pids: z.number().int().min(8, "pids must be at least 8").optional(),
    scratchBytes: z
      .number()
      .int()
      .min(1 << 20, "scratch must be at least 1M")
      .optional(),
    root: z
      .string()
      .regex(/^(host|[a-z0-9][a-z0-9._-]{0,62})$/, "root must be host or a template name")
      .optional(),
    writableRoot: z.boolean().optional(),
    needs: z.array(name("needs")).optional(),
    egress: z
      .array(z.string().regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, "egress must be HOST or HOST:PORT"))
      .optional(),
    repo: name("repo").optional(),
    retries: z.number().int().min(0).max(100).optional(),
  })
  .strict();
export type SubmitOptions = z.infer<typeof SubmitOptionsSchema>;

/** What a submit gets for an option that neither the request nor its recipe sets. */
export const SUBMIT_DEFAULTS = {
  project: "default",
  channel: "default",
  priority: 0,
  root: "host",
} as const;

/**
 * The body of POST /api/v1/jobs: the options plus exactly one of `command` (run as given) or `recipe`
 * with its `vars` (the master renders the recipe's script; see src/master/recipes/).
 */
export const SubmitSchema = SubmitOptionsSchema.extend({
  command: z
    .array(z.string().max(1 << 20))
    .min(1, "command must not be empty")
    .optional(),
  recipe: name("recipe").optional(),
  vars: z.record(z.string().max(200), z.string()).optional(),
})
  .strict()
  .superRefine((req, ctx) => {
    if (req.command && req.recipe)
      ctx.addIssue({ code: "custom", message: "give either command or recipe, not both" });
    else if (!req.command && !req.recipe)
      ctx.addIssue({ code: "custom", message: "command or recipe is required" });
    else if (req.vars && !req.recipe)
      ctx.addIssue({ code: "custom", path: ["vars"], message: "vars are only for a recipe" });
  });

import { z } from "zod";
import { isName, nameSchema } from "../lib/names.ts";
import { RepoSourceSchema } from "./repo-sources.ts";
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
/** One of JOB_STATES. */
export type JobState = (typeof JOB_STATES)[number];
/** The states a job never leaves. */
export const TERMINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled", "timed_out"];
/** True when state `s` is one a job never leaves. */
export const isTerminal = (s: string) => (TERMINAL_STATES as readonly string[]).includes(s);

/** Why a job failed; see SPEC.md "Job states". */
export const REASONS = [
  "exit",
  "signal",
  "oom",
  "pids",
  "no_space",
  "artifact_budget",
  "artifact_upload",
  "lost",
  "sandbox",
  "rejected",
  "publish",
  "setup",
] as const;
/** One of REASONS. */
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
  /**
   * A recipe's setup script (null for none): run by `sh -e` as root with the build capabilities on the
   * job's writable overlay, in the job's sandbox, before the command; a failure fails the job (`setup`).
   */
  setup: z.string().nullable().default(null),
  needs: z.array(z.string()),
  egress: z.array(z.string()),
  /** The repositories the job uses (`--use-repo`): its API proxy reaches these and no other. */
  useRepos: z.array(z.string()).default([]),
  /**
   * Those of them that still exist, resolved at assignment: the worker writes their apt or dnf sources
   * (and keys) into the job's writable root before its setup.
   */
  repoSources: z.array(RepoSourceSchema).default([]),
  /** `kiln submit --secret` values for the job's environment: never logged, shown, or given to others. */
  secrets: z.record(z.string(), z.string()).default({}),
  /** The attempt's own credential (src/master/job-credential.ts): its worker presents it for uploads. */
  credential: z.string().nullable().default(null),
});
/** A checked JobSpecSchema value. */
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
/** A checked OutcomeSchema value. */
export type Outcome = z.infer<typeof OutcomeSchema>;

/**
 * An artifact as the API and `--json` show it: `kind` read from its content (deb, rpm, image, other),
 * `mode` the permission bits the file had on the worker.
 */
export interface ArtifactInfo {
  name: string;
  size: number;
  sha256: string;
  kind: string;
  mode: number;
}

/** A job as the API and `--json` show it. */
export interface JobView {
  id: number;
  name: string;
  project: string;
  channel: string;
  arch: string | null;
  priority: number;
  command: string[];
  /** The setup its recipe runs as root on its writable root before the command, or null. */
  setup: string | null;
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
  /** The repository its packages are published into when it succeeds (`--repo`), or null. */
  repo: string | null;
  /** The repositories it installs from (`--use-repo`, a recipe's `use_repos`). */
  useRepos: string[];
  /** The recipe version the job was rendered from and the values it got; null for a plain job. */
  recipe: { name: string; version: number; vars: Record<string, string> } | null;
  /** The names of the job's `--secret` variables; their values are never shown. */
  secrets: string[];
  progress: { percent: number; message: string | null } | null;
  waitingFor: string | null;
  artifacts: ArtifactInfo[];
  /** The job whose inputs this one repeats (`kiln rebuild`), or null. */
  rebuildOf: number | null;
  /** How this job and its rebuild compare (shown on both); null when neither is a rebuild. */
  reproducibility: Reproducibility | null;
}

/**
 * A job and its rebuild compared artifact by artifact. `pending` until the rebuild ends; `failed` when it
 * did not succeed; `reproducible` when both made the same files with the same sha256, else `differs`.
 */
export interface Reproducibility {
  original: number;
  rebuild: number;
  state: "pending" | "failed" | "reproducible" | "differs";
  /** Whether both ran on the same template (by hash; true for the host root on both). */
  sameTemplate: boolean;
  /** The workers each ran on. */
  workers: { original: string | null; rebuild: string | null };
  /** Every artifact name of either job, with each side's sha256 (null where that job has no such file). */
  artifacts: { name: string; original: string | null; rebuild: string | null; same: boolean }[];
}

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/*
 * Limits of a job spec, checked at submit so a job that could never start (execve fails with E2BIG) is
 * refused before it is queued. Linux takes at most 128 KiB per argument or environment string
 * (MAX_ARG_STRLEN, execve(2)) and, with the usual 8 MiB stack, 2 MiB for all of them together; the
 * worker adds its own variables, so a job keeps to half of that.
 */
export const SPEC_LIMITS = {
  /** Arguments of the command. */
  args: 4096,
  /** Bytes of one argument, and of one `NAME=value` environment string. */
  stringBytes: 128 * 1024 - 1,
  /** Environment variables of a job. */
  envVars: 1024,
  /** Bytes of the command and the environment together. */
  execBytes: 1024 * 1024,
  /** Recipe variables of one submit, and bytes of one value. */
  vars: 256,
  varBytes: 64 * 1024,
} as const;

/** Bytes execve(2) needs for `command` and `env`: each string with its terminating NUL. */
export function execBytes(command: string[], env: Record<string, string>): number {
  let n = 0;
  for (const a of command) n += Buffer.byteLength(a) + 1;
  for (const [k, v] of Object.entries(env)) n += Buffer.byteLength(k) + Buffer.byteLength(v) + 2;
  return n;
}

/**
 * How many repositories one job may use: each one's key travels in the job's assignment and its source
 * file is written by the job's setup, one argument of the launcher (at most 128 KiB).
 */
export const MAX_USE_REPOS = 16;

/**
 * The options of a submit that a recipe's `[submit]` table may also set. None has a default here, so the
 * master can tell "not given" (the recipe's value, then the built-in default applies) from "given" (wins).
 */
export const SubmitOptionsSchema = z
  .object({
    name: z.string().max(200).optional(),
    project: nameSchema().optional(),
    channel: nameSchema().optional(),
    arch: nameSchema().optional(),
    priority: z
      .number()
      .int()
      .min(-1000, "must be at least -1000")
      .max(1000, "must be at most 1000")
      .optional(),
    env: z
      .record(
        z.string().regex(ENV_KEY, "names must be letters, digits and _, not starting with a digit").max(256),
        z.string(),
      )
      .refine((e) => Object.keys(e).length <= SPEC_LIMITS.envVars, {
        message: `at most ${SPEC_LIMITS.envVars} environment variables`,
      })
      .refine(
        (e) =>
          Object.entries(e).every(
            ([k, v]) => Buffer.byteLength(k) + Buffer.byteLength(v) + 1 <= SPEC_LIMITS.stringBytes,
          ),
        {
          message: `an environment variable (NAME=value) may hold at most ${SPEC_LIMITS.stringBytes} bytes`,
        },
      )
      .optional(),
    timeoutMs: z.number().int().positive("must be more than 0").optional(),
    memoryBytes: z
      .number()
      .int()
      .min(4 << 20, "must be at least 4M")
      .optional(),
    cpus: z.number().positive("must be more than 0").max(1024, "must be at most 1024").optional(),
    pids: z.number().int().min(8, "must be at least 8").optional(),
    scratchBytes: z
      .number()
      .int()
      .min(1 << 20, "must be at least 1M")
      .optional(),
    root: z
      .string()
      .refine((r) => r === "host" || isName(r), "must be host or a template name")
      .optional(),
    writableRoot: z.boolean().optional(),
    needs: z.array(nameSchema()).optional(),
    egress: z.array(z.string().regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, "must be HOST or HOST:PORT")).optional(),
    repo: nameSchema().optional(),
    useRepos: z.array(nameSchema()).max(MAX_USE_REPOS, `at most ${MAX_USE_REPOS} repositories`).optional(),
    repoForce: z.boolean().optional(),
    retries: z.number().int().min(0, "must be at least 0").max(100, "must be at most 100").optional(),
  })
  .strict();
/** A checked SubmitOptionsSchema value. */
export type SubmitOptions = z.infer<typeof SubmitOptionsSchema>;

/** The `kiln submit` flag behind each field of a submit request, so the CLI speaks of what the user typed. */
export const SUBMIT_FLAGS: Record<string, string> = {
  name: "--name",
  project: "--project",
  channel: "--channel",
  arch: "--arch",
  priority: "--priority",
  env: "--env",
  timeoutMs: "--timeout",
  memoryBytes: "--memory",
  cpus: "--cpus",
  pids: "--pids",
  scratchBytes: "--scratch",
  root: "--root",
  writableRoot: "--writable-root",
  needs: "--needs",
  egress: "--egress",
  repo: "--repo",
  useRepos: "--use-repo",
  repoForce: "--force",
  retries: "--retries",
  command: "the command",
  recipe: "--recipe",
  vars: "--var",
  secrets: "--secret",
};

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
    .array(
      z.string().refine((a) => Buffer.byteLength(a) <= SPEC_LIMITS.stringBytes, {
        message: `an argument may hold at most ${SPEC_LIMITS.stringBytes} bytes`,
      }),
    )
    .min(1, "command must not be empty")
    .max(SPEC_LIMITS.args, `a command may have at most ${SPEC_LIMITS.args} arguments`)
    .optional(),
  recipe: nameSchema().optional(),
  /*
   * Values the job gets in its environment like --env, but which Kiln never shows: not in the job's
   * views, not in any log of Kiln's, not to another job. Not a recipe option, so no recipe file holds one.
   */
  secrets: z
    .record(
      z.string().regex(ENV_KEY, "names must be letters, digits and _, not starting with a digit").max(256),
      z.string(),
    )
    .refine((e) => Object.keys(e).length <= 64, { message: "at most 64 secrets" })
    .refine(
      (e) =>
        Object.entries(e).every(
          ([k, v]) => Buffer.byteLength(k) + Buffer.byteLength(v) + 1 <= SPEC_LIMITS.stringBytes,
        ),
      { message: `a secret (NAME=value) may hold at most ${SPEC_LIMITS.stringBytes} bytes` },
    )
    .optional(),
  vars: z
    .record(
      z.string().max(200),
      z.string().refine((v) => Buffer.byteLength(v) <= SPEC_LIMITS.varBytes, {
        message: `a recipe variable may hold at most ${SPEC_LIMITS.varBytes} bytes`,
      }),
    )
    .refine((v) => Object.keys(v).length <= SPEC_LIMITS.vars, {
      message: `at most ${SPEC_LIMITS.vars} recipe variables`,
    })
    .optional(),
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

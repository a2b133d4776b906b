import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { parseDuration } from "../lib/duration.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { parseSize } from "../lib/size.ts";
import { type JobView, SUBMIT_FLAGS, SubmitSchema } from "../protocol/job.ts";
import { checkFlags, clientArgs, clientOf, intArg, print, repeated } from "./common.ts";
import { followLog } from "./follow-log.ts";
import { describeEnd } from "./job-format.ts";

/*
 * `kiln submit`: flags to a job request, checked in the user's words before it is sent; with --wait it
 * follows the log and exits with the job's status.
 */

const submitArgs = {
  ...clientArgs,
  name: { type: "string", description: "A name to show instead of the command", valueHint: "NAME" },
  project: { type: "string", description: "Project (default: default)", valueHint: "P" },
  channel: { type: "string", description: "Channel a worker must serve (default: default)", valueHint: "C" },
  arch: {
    type: "string",
    description: "Architecture a worker must have (amd64, arm64, ...)",
    valueHint: "ARCH",
  },
  priority: {
    type: "string",
    description: "Higher runs first; FIFO within a priority (default 0)",
    valueHint: "N",
  },
  timeout: {
    type: "string",
    description: "Wall-clock limit, e.g. 30m (default: the master's)",
    valueHint: "DURATION",
  },
  memory: { type: "string", description: "Memory limit, e.g. 2G", valueHint: "SIZE" },
  cpus: { type: "string", description: "CPU limit in cores, e.g. 1.5", valueHint: "N" },
  pids: { type: "string", description: "Process limit", valueHint: "N" },
  scratch: { type: "string", description: "Size of the job's /tmp, e.g. 4G", valueHint: "SIZE" },
  root: {
    type: "string",
    description: "Build root: host or a template name (default host)",
    valueHint: "ROOT",
  },
  "writable-root": {
    type: "boolean",
    description: "With --root TEMPLATE: let the job write to / (an overlay on its scratch)",
  },
  needs: { type: "string", description: "A slot resource the job needs (repeatable)", valueHint: "RESOURCE" },
  retries: {
    type: "string",
    description: "Re-runs after infrastructure failures (default: the master's)",
    valueHint: "N",
  },
  repo: {
    type: "string",
    description: "Publish the job's deb/rpm artifacts into this repository when it succeeds",
    valueHint: "NAME",
  },
  force: { type: "boolean", description: "With --repo: publish even packages that are not newer" },
  "use-repo": {
    type: "string",
    description:
      "Install from this repository: apt/dnf in the job (and its setup) reach it through the job's API proxy (repeatable)",
    valueHint: "NAME",
  },
  env: { type: "string", description: "Environment variable for the job (repeatable)", valueHint: "K=V" },
  secret: {
    type: "string",
    description:
      "Secret variable for the job, never shown by Kiln: NAME takes the value of $NAME here, NAME=V gives it (repeatable)",
    valueHint: "NAME[=V]",
  },
  egress: {
    type: "string",
    description: "Upstream host the job may reach through the proxy (repeatable)",
    valueHint: "HOST",
  },
  script: {
    type: "string",
    description: "Run this shell script file instead of a command",
    valueHint: "FILE",
  },
  recipe: {
    type: "string",
    description: "Run this recipe (see kiln recipe ls) instead of a command",
    valueHint: "NAME",
  },
  var: { type: "string", description: "A recipe variable's value (repeatable)", valueHint: "K=V" },
  wait: { type: "boolean", description: "Follow the log and exit with the job's exit status" },
} as const;

// The value of a flag parsed by fn (a size, a duration), or a usage error naming the flag.
function parsed<T>(flag: string, v: string | undefined, fn: (s: string) => T): T | undefined {
  if (v === undefined) return undefined;
  try {
    return fn(v);
  } catch (err) {
    throw new AppError("USAGE", `--${flag}: ${coerceError(err).message}`, { cause: err });
  }
}

/** `kiln submit`: queues one job and prints its id, or with --wait follows it to its end. */
export const submit = defineCommand({
  meta: {
    name: "submit",
    description:
      "Queue a job: kiln submit [flags] -- CMD [ARG...], or --script FILE, or --recipe NAME --var k=v",
  },
  args: submitArgs,
  async run(ctx) {
    checkFlags(ctx, submitArgs);
    const a = ctx.args;
    const dash = ctx.rawArgs.indexOf("--");
    let command = dash >= 0 ? ctx.rawArgs.slice(dash + 1) : a._;
    if (a.script) {
      if (command.length) throw new AppError("USAGE", "give either --script FILE or -- CMD, not both");
      let text: string;
      try {
        text = readFileSync(a.script, "utf8");
      } catch (err) {
        throw new AppError("USAGE", `--script ${a.script}: ${coerceError(err).message}`, { cause: err });
      }
      command = ["/bin/sh", "-ec", text, a.script];
    }
    if (a.recipe && command.length)
      throw new AppError(
        "USAGE",
        "give either --recipe NAME or a command (-- CMD or --script FILE), not both",
      );
    if (!a.recipe && a.var !== undefined)
      throw new AppError("USAGE", "--var is for a recipe: kiln submit --recipe NAME --var k=v");
    if (!a.recipe && command.length === 0)
      throw new AppError(
        "USAGE",
        "nothing to run: kiln submit [flags] -- CMD [ARG...] (or --script FILE, or --recipe NAME)",
      );
    const env = pairs("env", repeated(ctx.rawArgs, "env"));
    const vars = pairs("var", repeated(ctx.rawArgs, "var"));
    const secrets = secretsOf(repeated(ctx.rawArgs, "secret"));
    const cpus = parsed("cpus", a.cpus, (s) => {
      const n = Number(s);
      if (!(n > 0)) throw new Error(`"${s}" must be a positive number of cores`);
      return n;
    });
    const body = {
      name: a.name,
      project: a.project,
      channel: a.channel,
      arch: a.arch,
      priority: intArg("priority", a.priority),
      command: a.recipe ? undefined : command,
      recipe: a.recipe,
      vars: a.recipe ? vars : undefined,
      // Options not given stay out of the request, so a recipe's own defaults apply to them.
      env: Object.keys(env).length ? env : undefined,
      secrets: Object.keys(secrets).length ? secrets : undefined,
      timeoutMs: parsed("timeout", a.timeout, parseDuration),
      memoryBytes: parsed("memory", a.memory, parseSize),
      cpus,
      pids: intArg("pids", a.pids),
      scratchBytes: parsed("scratch", a.scratch, parseSize),
      root: a.root,
      writableRoot: a["writable-root"] ? true : undefined,
      needs: a.needs === undefined ? undefined : repeated(ctx.rawArgs, "needs"),
      egress: a.egress === undefined ? undefined : repeated(ctx.rawArgs, "egress"),
      repo: a.repo,
      repoForce: a.force ? true : undefined,
      useRepos: a["use-repo"] === undefined ? undefined : repeated(ctx.rawArgs, "use-repo"),
      retries: intArg("retries", a.retries),
    };
    const request = JSON.parse(JSON.stringify(body));
    checkRequest(request, {
      timeoutMs: a.timeout,
      memoryBytes: a.memory,
      scratchBytes: a.scratch,
      cpus: a.cpus,
      pids: a.pids,
      priority: a.priority,
      retries: a.retries,
    });
    const client = clientOf(a);
    const { id } = await client.request<{ id: number }>("POST", "/api/v1/jobs", request);
    if (!a.wait) {
      print(a.json, { id }, () => String(id));
      return;
    }
    if (!a.json) process.stderr.write(`job ${id} queued\n`);
    await followLog(client, id, process.stdout);
    const job = await client.request<JobView>("GET", `/api/v1/jobs/${id}`);
    if (a.json) print(true, job, () => "");
    else process.stderr.write(`job ${id} ${describeEnd(job)}\n`);
    process.exitCode = exitStatusOf(job);
  },
});

/**
 * Checks the request against the same schema the master uses, before anything is sent, and says what is
 * wrong in the words the user typed: the flag and its value (`--memory 1k: must be at least 4M`).
 */
function checkRequest(request: unknown, typed: Record<string, string | undefined>) {
  const r = SubmitSchema.safeParse(request);
  if (r.success) return;
  const issue = r.error.issues[0]!;
  const field = String(issue.path[0] ?? "");
  const flag = SUBMIT_FLAGS[field] ?? field;
  const value = typed[field] ?? (issue.path.length > 1 ? String(issue.path[1]) : undefined);
  throw new AppError("USAGE", `${flag}${value !== undefined ? ` ${value}` : ""}: ${issue.message}`);
}

/**
 * Parses repeated `--secret NAME` (the value of $NAME in this environment, so it never shows in `ps`) and
 * `--secret NAME=VALUE`. A usage error names the secret, never its value.
 */
function secretsOf(values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values) {
    const i = v.indexOf("=");
    const name = i < 0 ? v : v.slice(0, i);
    if (!name) throw new AppError("USAGE", "--secret needs a NAME: --secret NAME or --secret NAME=VALUE");
    if (name in out) throw new AppError("USAGE", `--secret ${name} is given twice`);
    const value = i < 0 ? process.env[name] : v.slice(i + 1);
    if (value === undefined)
      throw new AppError("USAGE", `--secret ${name}: $${name} is not set here; export it or give NAME=VALUE`);
    out[name] = value;
  }
  return out;
}

/** Parses repeated `--flag K=V` values; a key given twice is refused rather than silently overwritten. */
function pairs(flag: string, values: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of values) {
    const i = kv.indexOf("=");
    if (i <= 0) throw new AppError("USAGE", `--${flag} ${kv}: use K=V`);
    const key = kv.slice(0, i);
    if (key in out) throw new AppError("USAGE", `--${flag} ${key} is given twice`);
    out[key] = kv.slice(i + 1);
  }
  return out;
}

/** The exit status `submit --wait` returns: the job's own for exit, 124 for a timeout (as timeout(1)), 130 for a cancel, else 1. */
export function exitStatusOf(job: JobView): number {
  if (job.state === "succeeded") return 0;
  if (job.state === "timed_out") return 124;
  if (job.state === "cancelled") return 130;
  if (job.reason === "exit" && job.exitCode) return job.exitCode;
  return 1;
}

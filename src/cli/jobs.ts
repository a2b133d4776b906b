import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { formatDuration, parseDuration } from "../lib/duration.ts";
import { AppError, errorFrom } from "../lib/errors.ts";
import { delay } from "../lib/loop.ts";
import { formatSize, parseSize } from "../lib/size.ts";
import { isTerminal, JOB_STATES, type JobView, SUBMIT_FLAGS, SubmitSchema } from "../protocol/job.ts";
import { artifactsText } from "./artifacts.ts";
import type { Client } from "./client.ts";
import { checkFlags, clientArgs, clientOf, jobIdArg, print, repeated, safe, table } from "./common.ts";

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
  repo: { type: "string", description: "Publish package artifacts to this repository", valueHint: "NAME" },
  env: { type: "string", description: "Environment variable for the job (repeatable)", valueHint: "K=V" },
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

function int(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw new AppError("USAGE", `--${flag} ${v}: must be a whole number`);
  return Number(v);
}

function parsed<T>(flag: string, v: string | undefined, fn: (s: string) => T): T | undefined {
  if (v === undefined) return undefined;
  try {
    return fn(v);
  } catch (err) {
    throw new AppError("USAGE", `--${flag}: ${(err as Error).message}`);
  }
}

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
        throw new AppError("USAGE", `--script ${a.script}: ${(err as Error).message}`);
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
      priority: int("priority", a.priority),
      command: a.recipe ? undefined : command,
      recipe: a.recipe,
      vars: a.recipe ? vars : undefined,
      // Options not given stay out of the request, so a recipe's own defaults apply to them.
      env: Object.keys(env).length ? env : undefined,
      timeoutMs: parsed("timeout", a.timeout, parseDuration),
      memoryBytes: parsed("memory", a.memory, parseSize),
      cpus,
      pids: int("pids", a.pids),
      scratchBytes: parsed("scratch", a.scratch, parseSize),
      root: a.root,
      writableRoot: a["writable-root"] ? true : undefined,
      needs: a.needs === undefined ? undefined : repeated(ctx.rawArgs, "needs"),
      egress: a.egress === undefined ? undefined : repeated(ctx.rawArgs, "egress"),
      repo: a.repo,
      retries: int("retries", a.retries),
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

function describeEnd(job: JobView) {
  let s = job.state as string;
  if (job.reason) s += ` (${job.reason}${job.exitCode !== null ? ` ${job.exitCode}` : ""})`;
  if (job.message && job.state !== "succeeded") s += `: ${job.message}`;
  return s;
}

/**
 * Writes a job's log to `out` from byte 0, following it until the job ends. After a dropped connection
 * (the master restarting, a network blip) it reconnects and resumes at the byte it had reached, so no
 * byte is lost or repeated.
 */
export async function followLog(client: Client, id: number, out: NodeJS.WritableStream, follow = true) {
  let offset = 0;
  let failures = 0;
  for (;;) {
    let res: Response;
    try {
      res = await client.raw(`/api/v1/jobs/${id}/log?offset=${offset}&follow=${follow ? 1 : 0}`);
    } catch (err) {
      if (++failures > 600) throw err;
      if (failures === 1) process.stderr.write("kiln: lost the master; reconnecting...\n");
      await delay(Math.min(100 * failures, 1000));
      continue;
    }
    if (!res.ok) throw await errorFrom(res);
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        offset += chunk.length;
        await new Promise<void>((r) => (out.write(chunk) ? r() : out.once("drain", () => r())));
        failures = 0;
      }
    } catch {
      // The stream broke mid-way: reconnect from `offset`.
      await delay(100);
      continue;
    }
    if (!follow) return;
    const job = await client.request<JobView>("GET", `/api/v1/jobs/${id}`).catch(() => null);
    if (job && isTerminal(job.state) && offset >= job.logSize) return;
    await delay(100);
  }
}

export const jobs = defineCommand({
  meta: { name: "jobs", description: "List jobs, newest first" },
  args: {
    ...clientArgs,
    state: {
      type: "string",
      description: `Only jobs in this state: ${JOB_STATES.join(", ")}`,
      valueHint: "STATE",
    },
    project: { type: "string", description: "Only jobs of this project", valueHint: "P" },
    limit: { type: "string", description: "How many (default 50)", valueHint: "N" },
  },
  async run(ctx) {
    checkFlags(ctx, jobs.args as never);
    const a = ctx.args;
    const q = new URLSearchParams();
    if (a.state && !(JOB_STATES as readonly string[]).includes(a.state))
      throw new AppError("USAGE", `--state ${a.state}: use one of ${JOB_STATES.join(", ")}`);
    if (a.state) q.set("state", a.state);
    if (a.project) q.set("project", a.project);
    q.set("limit", String(int("limit", a.limit) ?? 50));
    const rows = await clientOf(a).request<JobView[]>("GET", `/api/v1/jobs?${q}`);
    print(a.json, rows, () =>
      rows.length === 0
        ? "no jobs"
        : table(
            ["ID", "STATE", "REASON", "PROJECT", "WORKER", "AGE", "NAME"],
            rows.map((j) => [
              j.id,
              j.state,
              j.reason,
              j.project,
              j.worker,
              formatDuration(Date.now() - Date.parse(j.createdAt)),
              j.name,
            ]),
          ),
    );
  },
});

export const show = defineCommand({
  meta: {
    name: "show",
    description: "Show one job: state, reason, exit code, times, worker, resources used",
  },
  args: { ...clientArgs, job: { type: "positional", description: "Job id", required: false } },
  async run(ctx) {
    checkFlags(ctx, show.args as never);
    const id = jobIdArg(ctx.args.job);
    const j = await clientOf(ctx.args).request<JobView>("GET", `/api/v1/jobs/${id}`);
    print(ctx.args.json, j, () => {
      const lines: [string, string | null][] = [
        ["job", `${j.id} ${j.name}`],
        ["state", j.state + (j.cancelRequested && !isTerminal(j.state) ? " (cancelling)" : "")],
        ["reason", j.reason],
        ["exit code", j.exitCode === null ? null : String(j.exitCode)],
        ["message", j.message],
        ["waiting for", j.waitingFor],
        ["project", j.project],
        ["channel", j.channel + (j.arch ? ` (${j.arch})` : "")],
        ["priority", String(j.priority)],
        ["attempt", `${j.attempt} of ${j.retries + 1}`],
        ["worker", j.worker ? `${j.worker}/${j.slot}` : null],
        ["created", j.createdAt],
        ["started", j.startedAt],
        ["finished", j.finishedAt],
        [
          "ran for",
          j.startedAt && j.finishedAt
            ? formatDuration(Date.parse(j.finishedAt) - Date.parse(j.startedAt))
            : null,
        ],
        ["timeout", formatDuration(j.timeoutMs)],
        ["limits", limitsText(j)],
        [
          "peak memory",
          j.resources.peakMemoryBytes === null ? null : formatSize(j.resources.peakMemoryBytes),
        ],
        ["cpu time", j.resources.cpuMs === null ? null : formatDuration(j.resources.cpuMs)],
        [
          "progress",
          j.progress ? `${j.progress.percent}%${j.progress.message ? ` ${j.progress.message}` : ""}` : null,
        ],
        ["log", `${j.logSize} bytes`],
        ["artifacts", artifactsText(j.artifacts)],
        ["retry of", j.retryOf === null ? null : String(j.retryOf)],
        ["recipe", j.recipe ? recipeText(j.recipe) : null],
        // A recipe job's command is the rendered script; the recipe line above says what it is.
        ["command", j.recipe ? null : brief(j.command.join(" "))],
      ];
      return lines
        .filter(([, v]) => v !== null && v !== "")
        .map(([k, v]) => `${`${k}:`.padEnd(13)}${safe(v!)}`)
        .join("\n");
    });
  },
});

/** "NAME v3 (url=..., dist=...)", quoting a value only where it would be ambiguous. */
function recipeText(r: NonNullable<JobView["recipe"]>) {
  const vars = Object.entries(r.vars).map(
    ([k, v]) => `${k}=${v === "" || /[\s,()"']/.test(v) ? JSON.stringify(v) : v}`,
  );
  return `${r.name} v${r.version}${vars.length ? ` (${vars.join(", ")})` : ""}`;
}

/** A command as one short line: a script's first lines are enough to recognise it (`--json` has it all). */
function brief(command: string): string {
  const lines = command.split("\n");
  const first = lines[0]!.length > 160 ? `${lines[0]!.slice(0, 160)}…` : lines[0]!;
  return lines.length > 1 ? `${first} … (${lines.length} lines)` : first;
}

function limitsText(j: JobView) {
  const r = j.resources;
  const parts = [`root ${r.root}${r.writableRoot ? " (writable)" : ""}`];
  if (r.memoryBytes) parts.push(`memory ${formatSize(r.memoryBytes)}`);
  if (r.cpus) parts.push(`cpus ${r.cpus}`);
  if (r.pids) parts.push(`pids ${r.pids}`);
  if (r.scratchBytes) parts.push(`scratch ${formatSize(r.scratchBytes)}`);
  if (r.needs.length) parts.push(`needs ${r.needs.join(",")}`);
  if (r.egress.length) parts.push(`egress ${r.egress.join(",")}`);
  return parts.join(", ");
}

export const logs = defineCommand({
  meta: { name: "logs", description: "Print a job's log; -f follows it until the job ends" },
  args: {
    ...clientArgs,
    follow: {
      type: "boolean",
      alias: "f",
      description: "Follow until the job ends (resumes after reconnects)",
    },
    job: { type: "positional", description: "Job id", required: false },
  },
  async run(ctx) {
    checkFlags(ctx, logs.args as never);
    const id = jobIdArg(ctx.args.job);
    const client = clientOf(ctx.args);
    await client.request("GET", `/api/v1/jobs/${id}`);
    await followLog(client, id, process.stdout, Boolean(ctx.args.follow));
  },
});

const simple = (name: string, description: string, action: string) => {
  const cmd = defineCommand({
    meta: { name, description },
    args: { ...clientArgs, job: { type: "positional", description: "Job id", required: false } },
    async run(ctx) {
      checkFlags(ctx, cmd.args as never);
      const id = jobIdArg(ctx.args.job);
      const res = await clientOf(ctx.args).request<JobView | { id: number }>(
        "POST",
        `/api/v1/jobs/${id}/${action}`,
      );
      print(ctx.args.json, res, () =>
        action === "retry"
          ? `job ${id} queued again as ${(res as { id: number }).id}`
          : `job ${id}: ${(res as JobView).state === "cancelled" ? "cancelled" : "cancelling"}`,
      );
    },
  });
  return cmd;
};

export const cancel = simple("cancel", "Cancel a job (kills its processes)", "cancel");
export const retry = simple("retry", "Queue a copy of an ended job", "retry");

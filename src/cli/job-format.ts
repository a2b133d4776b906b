import { formatDuration } from "../lib/duration.ts";
import { formatSize } from "../lib/size.ts";
import { isTerminal, type JobView, type Reproducibility } from "../protocol/job.ts";
import { artifactsText } from "./artifacts.ts";
import { safe, table } from "./common.ts";

/*
 * How jobs read on a terminal: the `kiln jobs` table, the `kiln show` page, and the one line `submit
 * --wait` ends with. The table and the page show every value through table() or safe(), so a name a
 * client chose cannot drive the terminal.
 */

/** The end of a job in one line: "failed (exit 2): message". */
export function describeEnd(job: JobView): string {
  let s = job.state as string;
  if (job.reason) s += ` (${job.reason}${job.exitCode !== null ? ` ${job.exitCode}` : ""})`;
  // The message can carry a name the job chose (an artifact, a file): never raw to the terminal.
  if (job.message && job.state !== "succeeded") s += `: ${safe(job.message)}`;
  return s;
}

/** The `kiln jobs` table, newest first as given; "no jobs" for none. */
export function jobsTable(rows: JobView[], now = Date.now()): string {
  if (rows.length === 0) return "no jobs";
  return table(
    ["ID", "STATE", "REASON", "PROJECT", "WORKER", "AGE", "NAME"],
    rows.map((j) => [
      j.id,
      j.state,
      j.reason,
      j.project,
      j.worker,
      formatDuration(now - Date.parse(j.createdAt)),
      j.name,
    ]),
  );
}

/** The `kiln show` page: one "key: value" line per field the job has, values made terminal-safe. */
export function showText(j: JobView): string {
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
      j.startedAt && j.finishedAt ? formatDuration(Date.parse(j.finishedAt) - Date.parse(j.startedAt)) : null,
    ],
    ["timeout", formatDuration(j.timeoutMs)],
    ["limits", limitsText(j)],
    ["peak memory", j.resources.peakMemoryBytes === null ? null : formatSize(j.resources.peakMemoryBytes)],
    ["cpu time", j.resources.cpuMs === null ? null : formatDuration(j.resources.cpuMs)],
    [
      "progress",
      j.progress ? `${j.progress.percent}%${j.progress.message ? ` ${j.progress.message}` : ""}` : null,
    ],
    ["log", `${j.logSize} bytes`],
    ["artifacts", artifactsText(j.artifacts)],
    ["retry of", j.retryOf === null ? null : String(j.retryOf)],
    ["secrets", j.secrets?.length ? `${j.secrets.join(", ")} (values not shown)` : null],
    ["rebuild of", j.rebuildOf === null ? null : String(j.rebuildOf)],
    ["rebuilt", j.reproducibility ? reproducibleText(j.reproducibility) : null],
    ["recipe", j.recipe ? recipeText(j.recipe) : null],
    ["repos", reposText(j)],
    // A recipe job's command is the rendered script; the recipe line above says what it is.
    ["command", j.recipe ? null : brief(j.command.join(" "))],
  ];
  return lines
    .filter(([, v]) => v !== null && v !== "")
    .map(([k, v]) => `${`${k}:`.padEnd(13)}${safe(v!)}`)
    .join("\n");
}

/** "uses a, b; publishes into c": the repositories a job installs from and the one it publishes into. */
function reposText(j: JobView): string | null {
  const parts: string[] = [];
  // Views from a master older than --use-repo have neither field.
  if (j.useRepos?.length) parts.push(`uses ${j.useRepos.join(", ")}`);
  if (j.repo) parts.push(`publishes into ${j.repo}`);
  return parts.length ? parts.join("; ") : null;
}

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
  const parts = [
    `root ${r.root}${r.writableRoot ? ` (writable${j.setup !== null ? ", with the recipe's setup" : ""})` : ""}`,
  ];
  if (r.memoryBytes) parts.push(`memory ${formatSize(r.memoryBytes)}`);
  if (r.cpus) parts.push(`cpus ${r.cpus}`);
  if (r.pids) parts.push(`pids ${r.pids}`);
  if (r.scratchBytes) parts.push(`scratch ${formatSize(r.scratchBytes)}`);
  if (r.needs.length) parts.push(`needs ${r.needs.join(",")}`);
  if (r.egress.length) parts.push(`egress ${r.egress.join(",")}`);
  return parts.join(", ");
}

/** One line on how a job and its rebuild compare: the verdict, and the files that differ. */
function reproducibleText(r: Reproducibility): string {
  const pair = `job ${r.original} and rebuild ${r.rebuild}`;
  switch (r.state) {
    case "pending":
      return `not compared yet: rebuild ${r.rebuild} has not ended`;
    case "failed":
      return `not compared: rebuild ${r.rebuild} did not succeed`;
    case "reproducible":
      return `reproducible (${pair} made the same files)`;
    case "differs":
      return `not reproducible (${pair}): ${r.artifacts
        .filter((x) => !x.same)
        .map((x) => x.name)
        .join(", ")} differ`;
  }
}

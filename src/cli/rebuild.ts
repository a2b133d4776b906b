import { Writable } from "node:stream";
import { defineCommand } from "citty";
import type { JobView, Reproducibility } from "../protocol/job.ts";
import { checkFlags, clientArgs, clientOf, jobIdArg, print, table } from "./common.ts";
import { followLog } from "./follow-log.ts";

/*
 * `kiln rebuild JOB [--compare]`: runs a succeeded job's inputs again, on another worker where there is
 * one; with --compare it waits for the rebuild and says, per artifact, whether the sha256 matches, and
 * exits 0 only when every one does.
 */

const rebuildArgs = {
  ...clientArgs,
  compare: {
    type: "boolean",
    description: "Wait for the rebuild and compare its artifacts with the job's (exit 1 when they differ)",
  },
  log: { type: "boolean", description: "With --compare, print the rebuild's log while waiting" },
  job: { type: "positional", description: "Job id of a succeeded job", required: false },
} as const;

/** `kiln rebuild JOB`: queues a rebuild; with --compare, reports whether the job is reproducible. */
export const rebuild = defineCommand({
  meta: {
    name: "rebuild",
    description:
      "Run a succeeded job's inputs again on another worker; --compare reports if it is reproducible",
  },
  args: rebuildArgs,
  async run(ctx) {
    checkFlags(ctx, rebuildArgs);
    const a = ctx.args;
    const id = jobIdArg(a.job);
    const client = clientOf(a);
    const { id: copy } = await client.request<{ id: number }>("POST", `/api/v1/jobs/${id}/rebuild`);
    if (!a.compare) {
      print(a.json, { id: copy }, () => `job ${id} rebuilding as ${copy}`);
      return;
    }
    process.stderr.write(`kiln: job ${id} rebuilding as ${copy}\n`);
    const sink = new Writable({ write: (_chunk, _enc, done) => done() });
    await followLog(client, copy, a.log ? process.stdout : sink);
    const view = await client.request<JobView>("GET", `/api/v1/jobs/${copy}`);
    const r = view.reproducibility;
    print(a.json, r, () => (r ? compareText(r) : `job ${copy} has nothing to compare`));
    if (r?.state !== "reproducible") process.exitCode = 1;
  },
});

/** The comparison as a person reads it: a verdict line, then one row per artifact. */
export function compareText(r: Reproducibility): string {
  const where = `job ${r.original} on ${r.workers.original ?? "?"}, rebuild ${r.rebuild} on ${r.workers.rebuild ?? "?"}`;
  const head = {
    pending: `pending: rebuild ${r.rebuild} has not ended`,
    failed: `not compared: rebuild ${r.rebuild} did not succeed (kiln show ${r.rebuild})`,
    reproducible: `reproducible: ${r.artifacts.length} artifact(s) with the same sha256 (${where})`,
    differs: `differs: ${r.artifacts.filter((x) => !x.same).length} of ${r.artifacts.length} artifact(s) (${where})`,
  }[r.state];
  const note = r.sameTemplate ? "" : "\nnote: the two ran on different templates";
  if (r.artifacts.length === 0) return `${head}${note}`;
  const short = (sha: string | null) => (sha === null ? "(missing)" : sha.slice(0, 16));
  const rows = r.artifacts.map((x) => [
    x.name,
    x.same ? "same" : "differs",
    short(x.original),
    short(x.rebuild),
  ]);
  return `${head}${note}\n${table(["ARTIFACT", "RESULT", "ORIGINAL SHA256", "REBUILD SHA256"], rows)}`;
}

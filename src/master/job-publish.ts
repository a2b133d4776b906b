import { AppError, coerceError } from "../lib/errors.ts";
import type { Outcome } from "../protocol/job.ts";
import type { JobRow } from "../store/schema.ts";
import type { MasterContext } from "./context.ts";

/*
 * A job submitted with --repo publishes its deb and rpm artifacts when it succeeds, before its end is
 * recorded: the job is `succeeded` only once its packages are served. A publish that is refused (a
 * package not newer than the repository's, of the wrong format or architecture, not a valid package)
 * or that fails ends the job `failed` with reason `publish`; its log and message say why. Its
 * artifacts stay, so `kiln repo publish REPO JOB` can publish them once the cause is fixed.
 */

/** Whether the attempt's outcome is one that publishes: it succeeded and the job names a repository. */
export const publishes = (row: JobRow, outcome: Outcome) =>
  outcome.state === "succeeded" && row.repo !== null;

/**
 * Publishes job `row`'s packages into its repository and returns the outcome to record: `outcome` as it
 * was, or failed with reason `publish`. What happened is appended to the job's log either way.
 */
export async function publishOutcome(ctx: MasterContext, row: JobRow, outcome: Outcome): Promise<Outcome> {
  const say = (text: string) => ctx.logs.append(row.id, `\n--- kiln: ${text} ---\n`);
  const repo = row.repo as string;
  try {
    const result = await ctx.repos.publishJob(row, {
      by: row.submittedBy ?? `job ${row.id}`,
      jobId: row.id,
      force: row.repoForce,
    });
    if (!result) {
      say(`repository ${repo}: the job left no deb or rpm artifact, nothing to publish`);
      return outcome;
    }
    const list = (ps: { name: string; version: string; arch: string }[]) =>
      ps.map((p) => `${p.name} ${p.version} (${p.arch})`).join(", ");
    if (result.added.length) say(`published into repository ${repo}: ${list(result.added)}`);
    if (result.unchanged.length) say(`already in repository ${repo}, unchanged: ${list(result.unchanged)}`);
    if (result.removed.length)
      say(`repository ${repo} keeps the newest versions; dropped ${list(result.removed)}`);
    return outcome;
  } catch (err) {
    const e = coerceError(err);
    const code = e instanceof AppError ? e.code : "INTERNAL";
    const message = `publishing into repository ${repo} failed: ${e.message}`;
    say(message);
    // The master's own failures are logged as errors where they happen (src/master/repos.ts).
    if (e instanceof AppError && e.status < 500)
      ctx.log.warn(`job ${row.id}: ${message}`, { jobId: row.id, attempt: row.attempt, code });
    return { ...outcome, state: "failed", reason: "publish", message };
  }
}

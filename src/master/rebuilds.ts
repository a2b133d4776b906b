import { AppError } from "../lib/errors.ts";
import { isTerminal, type Reproducibility } from "../protocol/job.ts";
import { listArtifacts } from "../store/artifacts.ts";
import { definitionOf, getJob, insertJob, latestRebuildOf } from "../store/jobs.ts";
import type { JobRow } from "../store/schema.ts";
import type { MasterContext } from "./context.ts";
import { resolveTemplate } from "./templates.ts";

/*
 * Reproducibility: a rebuild runs a finished job's inputs again (its definition, with the recipe version,
 * the recipe's values, the environment and the template it ran on) on another worker where there is
 * one, and the two jobs' artifacts are compared by sha256. The comparison is computed when a job is
 * shown, from the two jobs' artifact rows, so nothing has to be kept in step.
 */

/**
 * Queues a rebuild of `row` submitted by `submittedBy`. Refused (409) unless `row` succeeded, and when
 * the template it ran on has changed since: the rebuild would then not repeat its inputs.
 */
export async function queueRebuild(ctx: MasterContext, row: JobRow, submittedBy: string): Promise<JobRow> {
  if (row.state !== "succeeded") {
    const why = isTerminal(row.state) ? `ended ${row.state}` : `is still ${row.state}`;
    throw new AppError(
      "JOB_NOT_REBUILDABLE",
      `job ${row.id} ${why}: only a succeeded job has artifacts to compare with; retry it with \`kiln retry ${row.id}\``,
      { status: 409 },
    );
  }
  if (row.root !== "host") {
    const now = await resolveTemplate(ctx.store.db, row.root);
    if (row.templateHash !== null && now.hash !== row.templateHash) {
      throw new AppError(
        "TEMPLATE_CHANGED",
        `template ${row.root} changed since job ${row.id} ran (${row.templateHash.slice(0, 12)} then, ${now.hash.slice(0, 12)} now): a rebuild would not repeat its inputs`,
        { status: 409 },
      );
    }
  }
  const copy = await insertJob(ctx.store, {
    ...definitionOf(row),
    // A rebuild is for comparing: it never publishes into a repository a second time.
    repo: null,
    rebuildOf: row.id,
    avoidWorker: row.worker,
    submittedBy,
  });
  ctx.dispatch();
  return copy;
}

/** How `row` compares with its rebuild (or, for a rebuild, with its original); null when there is none. */
export async function reproducibilityOf(ctx: MasterContext, row: JobRow): Promise<Reproducibility | null> {
  const [original, rebuild] =
    row.rebuildOf !== null
      ? [await getJob(ctx.store.db, row.rebuildOf), row]
      : [row, await latestRebuildOf(ctx.store.db, row.id)];
  if (!original || !rebuild) return null;
  const base = {
    original: original.id,
    rebuild: rebuild.id,
    sameTemplate: original.root === rebuild.root && original.templateHash === rebuild.templateHash,
    workers: { original: original.worker, rebuild: rebuild.worker },
  };
  if (!isTerminal(rebuild.state)) return { ...base, state: "pending", artifacts: [] };
  const [a, b] = await Promise.all([
    listArtifacts(ctx.store.db, original.id),
    listArtifacts(ctx.store.db, rebuild.id),
  ]);
  const before = new Map(a.map((x) => [x.name, x.sha256]));
  const after = new Map(b.map((x) => [x.name, x.sha256]));
  const names = [...new Set([...before.keys(), ...after.keys()])].sort();
  const artifacts = names.map((name) => {
    const o = before.get(name) ?? null;
    const r = after.get(name) ?? null;
    return { name, original: o, rebuild: r, same: o !== null && o === r };
  });
  if (rebuild.state !== "succeeded") return { ...base, state: "failed", artifacts };
  return { ...base, state: artifacts.every((x) => x.same) ? "reproducible" : "differs", artifacts };
}

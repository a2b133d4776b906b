import { coerceError } from "../lib/errors.ts";
import type { JobSpec } from "../protocol/job.ts";
import { assignJob, queuedPage } from "../store/jobs.ts";
import type { JobRow } from "../store/schema.ts";
import type { MasterContext } from "./context.ts";
import type { LiveSlot, LiveWorker } from "./registry.ts";
import { resolveTemplate } from "./templates.ts";

/** True when `slot` of `worker` may run `job`: channel, arch and resources all match. */
export function slotFits(
  job: Pick<JobRow, "channel" | "arch" | "needs">,
  worker: LiveWorker,
  slot: LiveSlot,
): boolean {
  return (
    worker.channels.includes(job.channel) &&
    (job.arch === null || job.arch === worker.arch) &&
    job.needs.every((r) => slot.resources.includes(r))
  );
}

export function specOf(row: JobRow, template: JobSpec["template"] = null): JobSpec {
  return {
    id: row.id,
    attempt: row.attempt,
    name: row.name,
    project: row.project,
    command: row.command,
    env: row.env,
    timeoutMs: row.timeoutMs,
    memoryBytes: row.memoryBytes,
    cpus: row.cpus,
    pids: row.pids,
    scratchBytes: row.scratchBytes,
    root: row.root,
    template,
    writableRoot: row.writableRoot,
    needs: row.needs,
    egress: row.egress,
  };
}

/**
 * One dispatch pass: walks the queue in priority order and hands each job to a free slot that fits,
 * until no free slot is left or the queue is exhausted. Jobs are pushed the moment a pass runs; a pass
 * runs whenever a job is queued or a slot frees up, never on a polling interval.
 */
export async function dispatchOnce(ctx: MasterContext): Promise<number> {
  const free: { worker: LiveWorker; slot: LiveSlot }[] = [];
  for (const w of ctx.registry.workers.values()) {
    if (w.draining || w.holdReason) continue;
    for (const s of w.slots.values()) if (!s.job && !s.held) free.push({ worker: w, slot: s });
  }
  if (free.length === 0) return 0;
  let assigned = 0;
  let cursor: { priority: number; id: number } | null = null;
  // Small pages: in the common case the first queued job fits the first free slot.
  const PAGE = 32;
  while (free.length > 0) {
    const page = await queuedPage(ctx.store.db, cursor, PAGE);
    for (const job of page) {
      const i = free.findIndex((f) => slotFits(job, f.worker, f.slot));
      if (i < 0) continue;
      const { worker, slot } = free[i]!;
      // Claim the slot before the await so a concurrent report cannot hand it out twice.
      slot.job = `${job.id}:?`;
      free.splice(i, 1);
      const row = await assignJob(ctx.store, job.id, worker.name, slot.name, ctx.cfg.master.lease);
      if (!row) {
        slot.job = null;
        free.push({ worker, slot });
        continue;
      }
      slot.job = `${row.id}:${row.attempt}`;
      let template: JobSpec["template"] = null;
      if (row.root !== "host") {
        // Resolved now, not at submit: a template changed meanwhile means its current tree. A template
        // removed meanwhile leaves null, and the worker fails the job with reason sandbox, saying so.
        template = await resolveTemplate(ctx.store.db, row.root).catch(() => null);
      }
      try {
        worker.send({ type: "job.assign", job: specOf(row, template), slot: slot.name });
      } catch (err) {
        // The lease rules re-queue it if the worker never got it.
        ctx.log.warn(`job ${row.id}: could not send to ${worker.name}: ${coerceError(err).message}`);
      }
      assigned++;
      if (free.length === 0) break;
    }
    if (page.length < PAGE) break;
    const last = page[page.length - 1]!;
    cursor = { priority: last.priority, id: last.id };
  }
  return assigned;
}

/** Wraps dispatchOnce so that calls coalesce: one pass at a time, and one more if asked meanwhile. */
export function createDispatcher(getCtx: () => MasterContext) {
  let running: Promise<void> | null = null;
  let again = false;
  const run = async () => {
    do {
      again = false;
      try {
        await dispatchOnce(getCtx());
      } catch (err) {
        getCtx().log.error(`dispatch: ${coerceError(err).message}`);
      }
    } while (again);
    running = null;
  };
  return {
    dispatch() {
      if (running) again = true;
      else running = run();
    },
    async settled() {
      while (running) await running;
    },
  };
}

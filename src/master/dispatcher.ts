import { coerceError } from "../lib/errors.ts";
import { type JobSpec, JobSpecSchema } from "../protocol/job.ts";
import { assignJob, dispatchOrder, type QueuedJob, readyJobs } from "../store/jobs.ts";
import type { JobRow } from "../store/schema.ts";
import type { MasterContext } from "./context.ts";
import { newJobCredential } from "./job-credential.ts";
import type { LiveSlot, LiveWorker } from "./registry.ts";
import { repoSourcesOf } from "./repo-access.ts";
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

/** The spec's keys that do not come from a row column of the same name. */
const SPEC_APART = new Set(["template", "secrets", "credential", "repoSources"]);

/** The keys of a JobSpec that come from the job's row: all of them but those in SPEC_APART. */
const SPEC_FROM_ROW = Object.keys(JobSpecSchema.shape).filter((k) => !SPEC_APART.has(k)) as (keyof JobSpec &
  keyof JobRow)[];

/**
 * The spec a worker gets for the row's current attempt, read from the row by the spec's own keys, with
 * the template resolved at assignment and the attempt's credential (whose hash alone the row keeps).
 */
export function specOf(
  row: JobRow,
  template: JobSpec["template"] = null,
  credential: string | null = null,
  repoSources: JobSpec["repoSources"] = [],
): JobSpec {
  return {
    ...(Object.fromEntries(SPEC_FROM_ROW.map((k) => [k, row[k]])) as unknown as JobSpec),
    template,
    secrets: row.secrets ?? {},
    credential,
    repoSources,
  };
}

// A few more jobs than free slots are read per kind, so a rebuild that passes over the worker of its
// original (see anotherCouldRun) does not keep the jobs behind it from that worker's free slot.
const REBUILD_SLACK = 4;

/** Free slots that can run the same jobs: same channel, arch and resources. */
interface SlotKind {
  channel: string;
  arch: string;
  resources: string[];
  /** How many free slots are of this kind: no more jobs than that can be taken for it. */
  free: number;
}

function kindsOf(free: { worker: LiveWorker; slot: LiveSlot }[]): SlotKind[] {
  const kinds = new Map<string, SlotKind>();
  for (const { worker, slot } of free) {
    const resources = [...slot.resources].sort();
    for (const channel of worker.channels) {
      const key = JSON.stringify([channel, worker.arch, resources]);
      const k = kinds.get(key);
      if (k) k.free++;
      else kinds.set(key, { channel, arch: worker.arch, resources, free: 1 });
    }
  }
  return [...kinds.values()];
}

/**
 * One dispatch pass: hands the queued jobs that free slots can run to those slots, in priority order
 * (FIFO within a priority), each to the first free slot that fits. Jobs are pushed the moment a pass
 * runs; a pass runs whenever a job is queued or a slot frees up, never on a polling interval.
 *
 * A pass costs what the free slots can take, not what the queue holds: for each kind of free slot it
 * reads at most as many jobs as there are free slots of that kind, plus a few (readyJobs), so thousands of jobs
 * waiting for a channel or an architecture no free slot serves are never read. The candidates of all
 * kinds are merged into one order; a round that assigned something is followed by another, since a job
 * taken by one kind's slot can let the next candidate of another kind in.
 */
export async function dispatchOnce(ctx: MasterContext): Promise<number> {
  const free: { worker: LiveWorker; slot: LiveSlot }[] = [];
  const now = Date.now();
  let paused = Number.POSITIVE_INFINITY;
  for (const w of ctx.registry.workers.values()) {
    if (w.draining || w.holdReason || w.stopping) continue;
    for (const s of w.slots.values()) {
      if (s.job || s.held) continue;
      if ((s.refusedUntil ?? 0) > now) paused = Math.min(paused, s.refusedUntil!);
      else free.push({ worker: w, slot: s });
    }
  }
  // A slot paused after refusals is offered again when its pause ends, with no other event needed.
  if (paused !== Number.POSITIVE_INFINITY) wakeAt(ctx, paused);
  let assigned = 0;
  for (;;) {
    if (free.length === 0) return assigned;
    const seen = new Set<number>();
    const candidates: QueuedJob[] = [];
    // Whether some kind may have more ready jobs than it was given: only then can another round help.
    let more = false;
    for (const kind of kindsOf(free)) {
      const limit = kind.free + REBUILD_SLACK;
      const ready = await readyJobs(ctx.store.db, kind, limit);
      if (ready.length === limit) more = true;
      for (const job of ready) {
        if (!seen.has(job.id)) candidates.push(job);
        seen.add(job.id);
      }
    }
    candidates.sort(dispatchOrder);
    let round = 0;
    for (const job of candidates) {
      const avoid = job.avoidWorker !== null && anotherCouldRun(ctx, job) ? job.avoidWorker : null;
      const i = free.findIndex((f) => f.worker.name !== avoid && slotFits(job, f.worker, f.slot));
      if (i < 0) continue;
      const { worker, slot } = free[i]!;
      // Claim the slot before the await so a concurrent report cannot hand it out twice.
      slot.job = `${job.id}:?`;
      free.splice(i, 1);
      const credential = newJobCredential(job.id);
      // Resolved now, not at submit: a template changed meanwhile means its current tree. A template
      // removed meanwhile leaves null, and the worker fails the job with reason sandbox, saying so.
      const template: JobSpec["template"] =
        job.root !== "host" ? await resolveTemplate(ctx.store.db, job.root).catch(() => null) : null;
      const row = await assignJob(
        ctx.store,
        job.id,
        worker.name,
        slot.name,
        ctx.cfg.master.lease,
        Date.now(),
        credential.hash,
        template?.hash ?? null,
      );
      if (!row) {
        // Cancelled or taken meanwhile: the slot is free for the next candidate.
        slot.job = null;
        free.push({ worker, slot });
        continue;
      }
      slot.job = `${row.id}:${row.attempt}`;
      // The repositories the job uses, with their keys, for the sources its worker writes. Read here, like
      // the template, so a key imported since the submit is the one apt checks against. A key that cannot
      // be read (gpg failing) leaves the attempt unsent: its lease re-queues it.
      let sources: JobSpec["repoSources"] | null = [];
      if (row.useRepos.length) {
        sources = await repoSourcesOf(ctx, row).catch((err) => {
          ctx.log.error(
            `job ${row.id}: cannot read the keys of the repositories it uses (${row.useRepos.join(", ")}): ${coerceError(err).message}; it is re-queued when its lease ends (check gpg and DATA/repo-key on the master)`,
            { jobId: row.id, attempt: row.attempt, code: "REPO_KEY_UNREADABLE" },
          );
          return null;
        });
      }
      if (sources) {
        try {
          worker.send({
            type: "job.assign",
            job: specOf(row, template, credential.secret, sources),
            slot: slot.name,
          });
        } catch (err) {
          // The lease rules re-queue it if the worker never got it.
          ctx.log.warn(`job ${row.id}: could not send to ${worker.name}: ${coerceError(err).message}`, {
            jobId: row.id,
            attempt: row.attempt,
            worker: worker.name,
          });
        }
      }
      assigned++;
      round++;
      if (free.length === 0) break;
    }
    if (round === 0 || !more) return assigned;
  }
}

/**
 * Whether a live worker other than the job's avoided one (a rebuild passes over the worker of the job it
 * repeats) offers a slot that fits it, busy or not: only then is the avoided worker passed over, so a
 * rebuild on a one-worker farm still runs.
 */
function anotherCouldRun(ctx: MasterContext, job: QueuedJob): boolean {
  for (const w of ctx.registry.workers.values()) {
    if (w.name === job.avoidWorker || w.draining || w.holdReason || w.stopping) continue;
    for (const s of w.slots.values()) if (!s.held && slotFits(job, w, s)) return true;
  }
  return false;
}

/** Each master's pending wake-up, so masters in one process (tests) never cancel each other's. */
const wakeTimers = new WeakMap<MasterContext, { at: number; timer: Timer }>();

/** Asks for a dispatch pass at `at` (the earliest asked for wins). */
function wakeAt(ctx: MasterContext, at: number) {
  const pending = wakeTimers.get(ctx);
  if (pending && pending.at <= at) return;
  if (pending) clearTimeout(pending.timer);
  const timer = setTimeout(
    () => {
      wakeTimers.delete(ctx);
      ctx.dispatch();
    },
    Math.max(0, at - Date.now()),
  );
  // A pending wake-up never keeps the process alive on its own.
  timer.unref?.();
  wakeTimers.set(ctx, { at, timer });
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

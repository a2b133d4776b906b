import { and, asc, desc, eq, inArray, lt, type SQL, sql } from "drizzle-orm";
import type { JobState, Outcome } from "../protocol/job.ts";
import type { Db, Store, WriteOptions } from "./open.ts";
import { insertPrepared, inTransaction, prepared } from "./prepared.ts";
import { type JobRow, jobCounts, jobEvents, jobs } from "./schema.ts";

/*
 * Every change of a job's state goes through this file. Each is one transaction that updates the row
 * under a guard on the state and attempt it expects, and appends the matching job_events row; a change
 * whose guard does not hold changes nothing and returns null. That guard is what makes "exactly one
 * terminal state" hold when a worker's late report, a lease expiry and a cancel race each other.
 */

const ACTIVE: JobState[] = ["assigned", "running"];

/** What a submit stores: every column but those the store sets itself (id, state, attempt, created_at). */
export type NewJob = Omit<typeof jobs.$inferInsert, "id" | "state" | "attempt" | "createdAt">;

/**
 * The columns that say what a job is, as it was submitted: a retry copies exactly these, whatever is
 * added to the table later. Every other column is the state of its run, listed in RUN_STATE; a unit test
 * checks that each column of the table is in exactly one of the two lists.
 */
export const DEFINITION = [
  "name",
  "project",
  "channel",
  "arch",
  "priority",
  "command",
  "env",
  "timeoutMs",
  "memoryBytes",
  "cpus",
  "pids",
  "scratchBytes",
  "root",
  "writableRoot",
  "setup",
  "needs",
  "egress",
  "repo",
  "repoForce",
  "useRepos",
  "retries",
  "recipe",
  "recipeVersion",
  "recipeVars",
  "secrets",
] as const satisfies readonly (keyof JobRow)[];

/** The columns that belong to one run of a job (and to its provenance), never copied by a retry. */
export const RUN_STATE = [
  "id",
  "attempt",
  "state",
  "reason",
  "message",
  "exitCode",
  "worker",
  "slot",
  "leaseExpiresAt",
  "cancelRequested",
  "createdAt",
  "assignedAt",
  "startedAt",
  "finishedAt",
  "peakMemoryBytes",
  "cpuMs",
  "logSize",
  "logBase",
  "retryOf",
  "progress",
  "progressMessage",
  "submittedBy",
  "templateHash",
  "rebuildOf",
  "avoidWorker",
  "credentialHash",
] as const satisfies readonly (keyof JobRow)[];

/** The columns that define a job (DEFINITION): what a retry copies. */
export type JobDefinition = Pick<JobRow, (typeof DEFINITION)[number]>;

/** What `row` is as a submitted job: the one mapping a retry (and anything else that copies a job) uses. */
export function definitionOf(row: JobRow): JobDefinition {
  return Object.fromEntries(DEFINITION.map((k) => [k, row[k]])) as JobDefinition;
}

const P = sql.placeholder;

async function event(store: Store, tx: Db, row: JobRow, at: number) {
  // Every change of every job writes one: prepared once per store, never rebuilt.
  const { id: jobId, attempt, state, reason, message, worker } = row;
  await insertPrepared(
    store.db,
    tx,
    jobEvents,
    "event",
    { jobId, attempt, at, state, reason, message, worker },
    false,
  );
}

/** Queues a new job durably; returns its row once committed. */
export function insertJob(store: Store, job: NewJob, now = Date.now()): Promise<JobRow> {
  return store.write(async (tx) => {
    const [row] = await insertPrepared<JobRow>(store.db, tx, jobs, "job", {
      ...job,
      state: "queued",
      attempt: 1,
      createdAt: now,
    });
    await event(store, tx, row!, now);
    return row!;
  });
}

/** Job `id`, or undefined. */
export async function getJob(db: Db, id: number): Promise<JobRow | undefined> {
  const q = prepared(db, "getJob", () =>
    db
      .select()
      .from(jobs)
      .where(eq(jobs.id, sql.placeholder("id")))
      .prepare(),
  );
  return (await q.all({ id }))[0];
}

/** The newest rebuild of job `id` (`kiln rebuild`), or undefined when it has none. */
export async function latestRebuildOf(db: Db, id: number): Promise<JobRow | undefined> {
  const [row] = await db
    .select()
    .from(jobs)
    .where(and(eq(jobs.rebuildOf, id), sql`${jobs.rebuildOf} IS NOT NULL`))
    .orderBy(desc(jobs.id))
    .limit(1);
  return row;
}

/** Lists jobs newest first, optionally filtered. */
export function listJobs(db: Db, f: { state?: string; project?: string; limit?: number; before?: number }) {
  const conds = [];
  if (f.state) conds.push(eq(jobs.state, f.state));
  if (f.project) conds.push(eq(jobs.project, f.project));
  if (f.before) conds.push(lt(jobs.id, f.before));
  return db
    .select()
    .from(jobs)
    .where(conds.length ? and(...conds) : undefined)
    .orderBy(desc(jobs.id))
    .limit(f.limit ?? 100);
}

/** The columns the dispatcher reads of a queued job. */
export type QueuedJob = Pick<
  JobRow,
  "id" | "priority" | "channel" | "arch" | "needs" | "avoidWorker" | "root"
>;

/**
 * The first `limit` queued jobs, in dispatch order (higher priority first, FIFO within), that a slot
 * serving `channel`, of architecture `arch`, with `resources` can run: the job's channel is `channel`, its
 * arch is null or `arch`, and every one of its needs is among `resources`. The dispatcher calls this once
 * per kind of free slot, so a pass reads what the free slots can take, never the whole queue: jobs waiting
 * for a channel or an architecture no free slot serves are not read at all (the partial index
 * `jobs_ready` walks only the matching queued jobs, already in dispatch order).
 */
export async function readyJobs(
  db: Db,
  slot: { channel: string; arch: string; resources: string[] },
  limit: number,
): Promise<QueuedJob[]> {
  // `state = 'queued'` is written as a literal: SQLite uses a partial index only when it can see that
  // the query's condition implies the index's, which a bound parameter would hide. `arch IS ?` is an
  // equality the index serves for NULL too; two ordered walks (any arch, this arch) are merged here,
  // where one walk with `arch IS NULL OR arch = ?` would make SQLite sort every matching row.
  const q = prepared(db, "readyJobs", () =>
    db
      .select({
        id: jobs.id,
        priority: jobs.priority,
        channel: jobs.channel,
        arch: jobs.arch,
        needs: jobs.needs,
        avoidWorker: jobs.avoidWorker,
        root: jobs.root,
      })
      .from(jobs)
      .where(
        and(
          sql`${jobs.state} = 'queued'`,
          eq(jobs.channel, sql.placeholder("channel")),
          sql`${jobs.arch} IS ${sql.placeholder("arch")}`,
          sql`NOT EXISTS (SELECT 1 FROM json_each(${jobs.needs}) AS n WHERE n.value NOT IN (SELECT value FROM json_each(${sql.placeholder("resources")})))`,
        ),
      )
      .orderBy(desc(jobs.priority), asc(jobs.id))
      .limit(sql.placeholder("limit"))
      .prepare(),
  );
  const args = { channel: slot.channel, resources: JSON.stringify(slot.resources), limit };
  const [any, own] = await Promise.all([q.all({ ...args, arch: null }), q.all({ ...args, arch: slot.arch })]);
  return [...any, ...own].sort(dispatchOrder).slice(0, limit);
}

/** Dispatch order: higher priority first, then first come first served. */
export const dispatchOrder = (a: QueuedJob, b: QueuedJob) => b.priority - a.priority || a.id - b.id;

async function transition(
  store: Store,
  where: ReturnType<typeof and>,
  set: Partial<typeof jobs.$inferInsert>,
  now: number,
  opts: WriteOptions = {},
): Promise<JobRow | null> {
  return store.write(async (tx) => {
    const [row] = await tx.update(jobs).set(set).where(where).returning();
    if (!row) return null;
    await event(store, tx, row, now);
    return row;
  }, opts);
}

/** A job's changes: column -> value; an undefined value leaves its column as it is. */
type JobChanges = { [K in keyof typeof jobs.$inferInsert]?: (typeof jobs.$inferInsert)[K] | null };

/**
 * transition() for the changes every job goes through (assignment, start, end), prepared once per store
 * rather than built anew each time (drizzle's query building was a fifth of the master's CPU per job).
 * `guard.where` builds the condition with placeholders P(name) that `guard.args` fill, the same shape for
 * every call under `guard.key`; each change in `set` is bound as a placeholder.
 */
function preparedTransition(
  store: Store,
  guard: { key: string; where: () => SQL | undefined; args: Record<string, unknown> },
  set: JobChanges,
  now: number,
  opts: WriteOptions = {},
): Promise<JobRow | null> {
  const cols = (Object.keys(set) as (keyof JobChanges)[]).filter((c) => set[c] !== undefined);
  const args: Record<string, unknown> = { ...guard.args };
  for (const c of cols) args[`set_${c}`] = set[c];
  return store.write(async (tx) => {
    const q = prepared(store.db, `transition:${guard.key}:${cols.join(",")}`, () =>
      store.db
        .update(jobs)
        .set(Object.fromEntries(cols.map((c) => [c, P(`set_${c}`)])))
        .where(guard.where())
        .returning()
        .prepare(),
    );
    const [row] = await inTransaction(tx, q).all(args);
    if (!row) return null;
    await event(store, tx, row, now);
    return row;
  }, opts);
}

/*
 * Assignments, starts, lease extensions and progress are written without waiting for the disk
 * (durable: false). Lost to a power loss of the master's host, each is repaired without losing a job: a
 * job whose assignment was lost is queued again, and the worker that runs it is told to forget it when it
 * reports it (the hello, or job.started); a lost start leaves the job assigned to the worker that runs it;
 * a lost lease extension is made again by the next heartbeat. Every other change of a job's state is
 * durable before its promise resolves.
 */
const RELAXED: WriteOptions = { durable: false };

/**
 * Assigns a queued job to a worker's slot; null if it is no longer queued. `credentialHash` is the hash of
 * the attempt's job credential, replacing any earlier attempt's; `templateHash` the hash of the template
 * tree the attempt is given (what a rebuild must find unchanged).
 */
export function assignJob(
  store: Store,
  id: number,
  worker: string,
  slot: string,
  leaseMs: number,
  now = Date.now(),
  credentialHash: string | null = null,
  templateHash: string | null = null,
) {
  return preparedTransition(
    store,
    { key: "assign", where: () => and(eq(jobs.id, P("id")), eq(jobs.state, "queued")), args: { id } },
    {
      state: "assigned",
      worker,
      slot,
      assignedAt: now,
      leaseExpiresAt: now + leaseMs,
      credentialHash,
      // A template removed meanwhile resolves to nothing: the attempt keeps the hash recorded before.
      templateHash: templateHash ?? undefined,
    },
    now,
    RELAXED,
  );
}

/** Records that the worker started the attempt. */
export function markRunning(
  store: Store,
  id: number,
  attempt: number,
  worker: string,
  leaseMs: number,
  now = Date.now(),
) {
  return preparedTransition(
    store,
    {
      key: "start",
      where: () =>
        and(
          eq(jobs.id, P("id")),
          eq(jobs.attempt, P("attempt")),
          eq(jobs.worker, P("worker")),
          eq(jobs.state, "assigned"),
        ),
      args: { id, attempt, worker },
    },
    { state: "running", startedAt: now, leaseExpiresAt: now + leaseMs },
    now,
    RELAXED,
  );
}

/**
 * Records the attempt's outcome as the job's one terminal state; null if it already has one. `from` are
 * the states it may end from: an active attempt's own result, or (with queued too) the late result of an
 * earlier attempt, which ends the job wherever its current attempt stands. With opts.durable false it
 * resolves once committed: the caller must await store.sync() before it acknowledges the result.
 */
export function finishJob(
  store: Store,
  id: number,
  attempt: number,
  outcome: Outcome,
  logSize: number,
  now = Date.now(),
  from: JobState[] = ACTIVE,
  opts: WriteOptions = {},
) {
  return preparedTransition(
    store,
    {
      // `from` is one of a few fixed lists: part of the statement, not a value.
      key: `finish:${from.join(",")}`,
      where: () => and(eq(jobs.id, P("id")), eq(jobs.attempt, P("attempt")), inArray(jobs.state, from)),
      args: { id, attempt },
    },
    {
      state: outcome.state,
      reason: outcome.reason,
      exitCode: outcome.exitCode,
      message: outcome.message,
      peakMemoryBytes: outcome.peakMemoryBytes,
      cpuMs: outcome.cpuMs,
      finishedAt: now,
      leaseExpiresAt: null,
      logSize,
    },
    now,
    opts,
  );
}

/**
 * An attempt was lost (its worker vanished or forgot it). The job goes back to the queue while retries
 * remain, else ends failed with reason `lost`; a job whose cancel was requested ends cancelled instead.
 */
export async function requeueOrLose(
  store: Store,
  row: JobRow,
  why: string,
  logBase: number,
  now = Date.now(),
) {
  const guard = and(eq(jobs.id, row.id), eq(jobs.attempt, row.attempt), inArray(jobs.state, ACTIVE));
  if (row.cancelRequested) {
    return transition(
      store,
      guard,
      { state: "cancelled", message: why, finishedAt: now, leaseExpiresAt: null },
      now,
    );
  }
  if (row.attempt <= row.retries) {
    return transition(
      store,
      guard,
      {
        state: "queued",
        attempt: row.attempt + 1,
        message: `attempt ${row.attempt} lost: ${why}`,
        worker: null,
        slot: null,
        leaseExpiresAt: null,
        assignedAt: null,
        startedAt: null,
        logBase,
      },
      now,
    );
  }
  return transition(
    store,
    guard,
    {
      state: "failed",
      reason: "lost",
      message: why,
      finishedAt: now,
      leaseExpiresAt: null,
      logSize: logBase,
    },
    now,
  );
}

/**
 * Cancels a job: a queued job ends cancelled at once; an active one is flagged so its worker kills it and
 * reports `cancelled`. Returns the row after the change, or null when the job had already ended.
 */
export async function cancelJob(store: Store, id: number, now = Date.now()): Promise<JobRow | null> {
  const queued = await transition(
    store,
    and(eq(jobs.id, id), eq(jobs.state, "queued")),
    { state: "cancelled", message: "cancelled before it started", finishedAt: now },
    now,
  );
  if (queued) return queued;
  return store.write(async (tx) => {
    const [row] = await tx
      .update(jobs)
      .set({ cancelRequested: true })
      .where(and(eq(jobs.id, id), inArray(jobs.state, ACTIVE)))
      .returning();
    return row ?? null;
  });
}

/** Extends the leases of the given active jobs held by `worker`. */
export function extendLeases(store: Store, worker: string, ids: number[], leaseMs: number, now = Date.now()) {
  if (ids.length === 0) return Promise.resolve();
  return store.write(async (tx) => {
    await tx
      .update(jobs)
      .set({ leaseExpiresAt: now + leaseMs })
      .where(and(eq(jobs.worker, worker), inArray(jobs.state, ACTIVE), inArray(jobs.id, ids)));
  }, RELAXED);
}

/** Gives every active job at least a full lease from `now` (after the master itself could not write). */
export function extendActiveLeases(store: Store, leaseMs: number, now = Date.now()) {
  return store.write(async (tx) => {
    await tx
      .update(jobs)
      .set({ leaseExpiresAt: sql`max(coalesce(${jobs.leaseExpiresAt}, 0), ${now + leaseMs})` })
      .where(inArray(jobs.state, ACTIVE));
  });
}

/** Active jobs whose lease ran out. */
export function expiredLeases(db: Db, now = Date.now()) {
  const q = prepared(db, "expiredLeases", () =>
    db
      .select()
      .from(jobs)
      .where(and(inArray(jobs.state, ACTIVE), lt(jobs.leaseExpiresAt, sql.placeholder("now"))))
      .prepare(),
  );
  return q.all({ now });
}

/** Active jobs the store believes `worker` holds. */
export function activeJobsOf(db: Db, worker: string) {
  return db
    .select()
    .from(jobs)
    .where(and(eq(jobs.worker, worker), inArray(jobs.state, ACTIVE)));
}

/** Stores a running job's progress report, if `worker` is the one running that attempt. */
export function setProgress(
  store: Store,
  id: number,
  attempt: number,
  worker: string,
  percent: number,
  message: string | null,
) {
  return store.write(async (tx) => {
    await tx
      .update(jobs)
      .set({ progress: percent, progressMessage: message })
      .where(
        and(eq(jobs.id, id), eq(jobs.attempt, attempt), eq(jobs.worker, worker), eq(jobs.state, "running")),
      );
  }, RELAXED);
}

/** The worker attempt `attempt` of job `id` was assigned to, from the job's history; null if none was. */
export async function workerOfAttempt(db: Db, id: number, attempt: number): Promise<string | null> {
  const [row] = await db
    .select({ worker: jobEvents.worker })
    .from(jobEvents)
    .where(and(eq(jobEvents.jobId, id), eq(jobEvents.attempt, attempt), eq(jobEvents.state, "assigned")))
    .orderBy(desc(jobEvents.id))
    .limit(1);
  return row?.worker ?? null;
}

/** The job's state history, oldest first. */
export function jobHistory(db: Db, id: number) {
  return db.select().from(jobEvents).where(eq(jobEvents.jobId, id)).orderBy(asc(jobEvents.id));
}

/** Counts of jobs per state, for /metrics: the rows the triggers on `jobs` keep (see jobCounts). */
export async function countByState(db: Db): Promise<Record<string, number>> {
  const rows = await db.select().from(jobCounts);
  return Object.fromEntries(rows.map((r) => [r.state, r.n]));
}

/**
 * A worker handed an assignment back unstarted (its slot turned out held or busy, or could not be set up
 * for it): the job goes back to the queue without spending one of its retries.
 */
export function requeueRefused(store: Store, row: JobRow, why: string, logBase: number, now = Date.now()) {
  return transition(
    store,
    and(eq(jobs.id, row.id), eq(jobs.attempt, row.attempt), inArray(jobs.state, ACTIVE)),
    {
      state: "queued",
      attempt: row.attempt + 1,
      retries: row.retries + 1,
      message: `handed back by ${row.worker}: ${why}`,
      worker: null,
      slot: null,
      leaseExpiresAt: null,
      assignedAt: null,
      startedAt: null,
      logBase,
    },
    now,
  );
}

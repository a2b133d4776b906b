import { existsSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { coerceError } from "../lib/errors.ts";
import { errorFields } from "../lib/log.ts";
import type { Outcome } from "../protocol/job.ts";
import type { Undelivered } from "./artifacts.ts";
import type { Connection, JobRef } from "./connection.ts";
import {
  type JobDir,
  jobKey,
  readOutcome,
  removeJobDirLater,
  syncOutcome,
  writeFirstOutcome,
} from "./job-dir.ts";

/*
 * The outbox holds the results of finished attempts until the master acknowledges them: each is on disk
 * (outcome.json) from the moment it is added, its artifacts are delivered before its result is sent,
 * and a result is sent only after the last byte of its log.
 *
 * On disk means in the kernel's cache at first, which a crash of the worker does not lose. A result the
 * master has not acknowledged within SYNC_AFTER is synced to the disk too, so a power loss does not lose
 * it either; most are acknowledged first (the master acks once the result is on its own disk), and their
 * outcome.json is deleted unsynced, which spares the data disk two syncs per job. A power loss of the
 * worker's host before the sync makes such an attempt look interrupted after the restart: the master
 * retries it (or ends it `lost` when no retry is left), as it does the attempts that were running then.
 */

// A result the master has not acknowledged after this long is sent again: two heartbeats.
const RESEND_FINISHED = 10_000;
// A failed artifact delivery is tried again after this long (the master may be restarting).
const DELIVERY_RETRY = 2000;
// A result not acknowledged after this long has its outcome.json synced to disk.
const SYNC_AFTER = 100;

interface Entry {
  job: JobDir;
  outcome: Outcome;
  logSize: number;
  /** An artifact delivery is under way: nothing else may start one. */
  delivering: boolean;
  /** No delivery starts before this time (a failed one waits before the next try). */
  retryAt: number;
  /** The artifacts are delivered (or there were none), as the marker file says after a restart. */
  delivered: boolean;
  /*
   * When job.finished went out after the last log byte. Cleared when the master asks for bytes again or
   * the connection is new, and the pump loop sends it again then, or when no ack came for a while (the
   * master could not record it), so a result is never left waiting on a full socket or a master that
   * was out of disk.
   */
  reported?: number;
  /** When job.finished first went out (performance.now()), for the debug record of the ack's delay. */
  sentAt?: number;
}

/** Finished attempts waiting for the master's ack, keyed by jobKey. */
export interface Outbox {
  /** True while the attempt's result waits for its ack. */
  has(key: string): boolean;
  /** How many results wait. */
  size(): number;
  /** The attempts whose results wait, as the hello lists them. */
  list(): JobRef[];
  /**
   * Writes the attempt's outcome and keeps it until the master acks or forgets it; resolves once it is
   * in the outbox, rejects (keeping nothing) when it could not be written.
   */
  add(job: JobDir, outcome: Outcome, logSize: number): Promise<void>;
  /** Sends the result once the log is all sent and the artifacts delivered; a later pass retries. */
  report(key: string): void;
  /** Results to send (again) now: never sent since the last reason to, or unacknowledged too long. */
  due(now: number): string[];
  /** Forgets that the result was sent (a new connection, or the master asked for log bytes). */
  unreport(key?: string): void;
  /** Drops the attempt's result and its directory: the master has it (ack) or no longer wants it. */
  remove(key: string): boolean;
  /** Waits for the directories being deleted in the background; for a clean stop. */
  settled(): Promise<void>;
  /** The attempt's directory, while its result waits. */
  dir(key: string): JobDir | null;
}

/** What the outbox needs from the rest of the worker. */
export interface OutboxOptions {
  conn: Connection;
  log: ConsolaInstance;
  /** Attempts that finished in an earlier life of the worker (their outcome.json is on disk). */
  finished: JobDir[];
  /** Sends the rest of the attempt's log; true when none is left to send. */
  flush(key: string): boolean;
  /**
   * Uploads the attempt's artifacts; rejects when the master cannot take them now. Resolves to the
   * attempt's new outcome and log size when a file was refused for good (already written to disk).
   */
  deliver(job: JobDir, outcome: Outcome): Promise<Undelivered | null>;
}

/** The outbox, holding already the results that finished before a restart. */
export function createOutbox(o: OutboxOptions): Outbox {
  const entries = new Map<string, Entry>();
  const keep = (job: JobDir, outcome: Outcome, logSize: number) =>
    entries.set(jobKey(job.jobId, job.attempt), {
      job,
      outcome,
      logSize,
      delivering: false,
      retryAt: 0,
      delivered: false,
    });
  const background = new Set<Promise<void>>();
  // Results waiting for their sync, the timer that syncs them, and the sync under way.
  const unsynced = new Set<string>();
  let syncTimer: Timer | null = null;
  const syncNow = () => {
    if (syncTimer) clearTimeout(syncTimer);
    syncTimer = null;
    const due = [...unsynced].map((k) => entries.get(k)).filter((e) => e !== undefined);
    unsynced.clear();
    for (const e of due) {
      const sync = syncOutcome(e.job)
        .catch((err) => {
          // Acknowledged meanwhile: its directory is going, and nothing is left to keep.
          if (entries.get(jobKey(e.job.jobId, e.job.attempt)) !== e) return;
          // Still in the kernel's cache, so still sent and kept; only a power loss could take it now.
          const error = coerceError(err);
          o.log.warn(`job ${e.job.jobId}: cannot sync its outcome to disk: ${error.message}`, {
            jobId: e.job.jobId,
            attempt: e.job.attempt,
            ...errorFields(error),
          });
        })
        .finally(() => background.delete(sync));
      // A stop waits for syncs under way as for deletions: neither may be cut off half-way.
      background.add(sync);
    }
  };
  const syncLater = (key: string) => {
    unsynced.add(key);
    if (syncTimer) return;
    syncTimer = setTimeout(syncNow, SYNC_AFTER);
    syncTimer.unref?.();
  };
  for (const d of o.finished) {
    const done = readOutcome(d);
    if (done) keep(d, done.outcome, done.logSize);
  }

  const report = (key: string) => {
    const e = entries.get(key);
    if (!e || e.delivering || Date.now() < e.retryAt || !o.conn.isOpen()) return;
    // Backpressure: the rest of the log goes out on a later turn of the pump loop, then the result.
    if (!o.flush(key)) return;
    if (!e.delivered && !existsSync(join(e.job.dir, "artifacts-delivered"))) {
      e.delivering = true;
      o.deliver(e.job, e.outcome).then(
        (undelivered) => {
          if (undelivered) Object.assign(e, undelivered);
          e.delivering = false;
          e.delivered = true;
          report(key);
        },
        (err) => {
          e.delivering = false;
          e.retryAt = Date.now() + DELIVERY_RETRY;
          const error = coerceError(err);
          o.log.warn(`job ${e.job.jobId}: ${error.message}; retrying in 2 s`, {
            jobId: e.job.jobId,
            attempt: e.job.attempt,
            ...errorFields(error),
          });
        },
      );
      return;
    }
    o.conn.send({
      type: "job.finished",
      jobId: e.job.jobId,
      attempt: e.job.attempt,
      outcome: e.outcome,
      logSize: e.logSize,
    });
    e.reported = Date.now();
    e.sentAt ??= performance.now();
  };

  return {
    has: (key) => entries.has(key),
    size: () => entries.size,
    list: () => [...entries.values()].map((e) => ({ jobId: e.job.jobId, attempt: e.job.attempt })),
    async add(job, outcome, logSize) {
      await writeFirstOutcome(job, outcome, logSize);
      keep(job, outcome, logSize);
      syncLater(jobKey(job.jobId, job.attempt));
    },
    report,
    due: (now) =>
      [...entries].filter(([, e]) => !e.reported || now - e.reported > RESEND_FINISHED).map(([key]) => key),
    unreport(key) {
      if (key === undefined) for (const e of entries.values()) e.reported = undefined;
      else {
        const e = entries.get(key);
        if (e) e.reported = undefined;
      }
    },
    remove(key) {
      const e = entries.get(key);
      if (!e) return false;
      entries.delete(key);
      unsynced.delete(key);
      if (e.sentAt !== undefined)
        o.log.debug(`job ${e.job.jobId}: result taken by the master (acknowledged or withdrawn)`, {
          jobId: e.job.jobId,
          attempt: e.job.attempt,
          ackMs: Math.round((performance.now() - e.sentAt) * 10) / 10,
        });
      // A sync of it under way holds its descriptor: the directory may go meanwhile.
      const removal = removeJobDirLater(e.job).finally(() => background.delete(removal));
      background.add(removal);
      return true;
    },
    dir: (key) => entries.get(key)?.job ?? null,
    async settled() {
      // What still waits for the ack is synced now rather than left to the cache.
      syncNow();
      while (background.size > 0) await Promise.all([...background]);
    },
  };
}

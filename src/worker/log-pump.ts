import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { encodeLogFrame } from "../protocol/wire.ts";
import type { Connection } from "./connection.ts";
import { type JobDir, jobKey, logPath } from "./job-dir.ts";
import type { Outbox } from "./outbox.ts";

/*
 * The log pump sends each attempt's log file to the master in order, never losing a byte: what does not
 * fit in the socket now goes on a later pass, from where the master's copy ends; its pass also sends
 * again the results of finished attempts that the master has not acknowledged.
 */

const LOG_CHUNK = 64 * 1024;
// Stop sending log bytes while this much is still queued in the socket; the master asks for the rest.
const MAX_BUFFERED = 4 * 1024 * 1024;

interface Cursor {
  jobId: number;
  attempt: number;
  fd: number;
  /** How many bytes of the log the master has been sent (or said it has). */
  sent: number;
}

/** The logs being sent, one cursor per attempt (keyed by jobKey). */
export interface LogPump {
  /** Starts sending an attempt's log from its first byte; the pump owns `fd` from now on and closes it. */
  follow(jobId: number, attempt: number, fd: number): void;
  /** True while the pump holds the attempt's log open. */
  following(key: string): boolean;
  /** Opens the log of a finished attempt from an earlier life of the worker, unless it is open already. */
  reopen(job: JobDir): void;
  /** The master's copy ends at `offset` (it asked from there): later bytes are sent from there. */
  rewind(key: string, offset: number): void;
  /** Sends what the log holds past the master's copy; true when all of it went (or there is no log). */
  flush(key: string): boolean;
  /** Closes the attempt's log and forgets it. */
  close(key: string): void;
  /** Attempts whose logs are open. */
  keys(): string[];
}

/** A pump sending through `conn`; with `echo` every byte sent is written to this process's stderr too. */
export function createLogPump(conn: Connection, echo: boolean): LogPump {
  const cursors = new Map<string, Cursor>();
  const buf = new Uint8Array(LOG_CHUNK);
  return {
    follow(jobId, attempt, fd) {
      cursors.set(jobKey(jobId, attempt), { jobId, attempt, fd, sent: 0 });
    },
    following: (key) => cursors.has(key),
    reopen(job) {
      const key = jobKey(job.jobId, job.attempt);
      if (cursors.has(key)) return;
      cursors.set(key, { jobId: job.jobId, attempt: job.attempt, fd: openSync(logPath(job), "a+"), sent: 0 });
    },
    rewind(key, offset) {
      const c = cursors.get(key);
      if (c) c.sent = Math.min(offset, fstatSync(c.fd).size);
    },
    flush(key) {
      const c = cursors.get(key);
      if (!c) return true;
      if (!conn.isOpen()) return false;
      const size = fstatSync(c.fd).size;
      while (c.sent < size) {
        if (conn.buffered() > MAX_BUFFERED) return false;
        const n = readSync(c.fd, buf, 0, Math.min(LOG_CHUNK, size - c.sent), c.sent);
        if (n <= 0) break;
        const frame = encodeLogFrame({
          jobId: c.jobId,
          attempt: c.attempt,
          offset: c.sent,
          data: buf.subarray(0, n),
        });
        if (!conn.sendFrame(frame)) return false;
        // The frame's own copy: `buf` is overwritten by the next read before stderr may have written it.
        if (echo) process.stderr.write(frame.subarray(frame.length - n));
        c.sent += n;
      }
      return c.sent >= size;
    },
    close(key) {
      const c = cursors.get(key);
      if (!c) return;
      cursors.delete(key);
      closeSync(c.fd);
    },
    keys: () => [...cursors.keys()],
  };
}

/**
 * One pass of the pump loop: running attempts' new output, then finished attempts whose log or result
 * did not fit in the socket's buffer last time, or whose result the master has not acknowledged.
 */
export function pumpOnce(pump: LogPump, outbox: Outbox, now = Date.now()) {
  for (const key of pump.keys()) if (!outbox.has(key)) pump.flush(key);
  for (const key of outbox.due(now)) outbox.report(key);
}

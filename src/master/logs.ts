import { closeSync, fstatSync, ftruncateSync, mkdirSync, openSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";

/*
 * Job logs live on disk, one file per job (every attempt appended in turn), and are never held whole in
 * memory. Writers are the worker connections; readers are followers, who read the file from their own
 * offset and are woken when it grows, so a thousand followers cost the job's writer nothing.
 */

interface OpenLog {
  fd: number;
  size: number;
}

/** Job logs on disk, a file per job, written by byte offset: a resend never duplicates or skips a byte. */
export interface LogStore {
  path(jobId: number): string;
  /** Current size of the job's log in bytes (0 when none yet). */
  size(jobId: number): number;
  /**
   * Writes `data` so that it lands at byte `at` of the file. Bytes already present are skipped (a resend
   * after a reconnect); returns false when `at` is past the end, i.e. something is missing and the writer
   * must resend from size().
   */
  writeAt(jobId: number, at: number, data: Uint8Array): boolean;
  append(jobId: number, text: string): number;
  close(jobId: number): void;
  /** Resolves when the log grows or the job may have changed state, or after `ms`. */
  waitForChange(jobId: number, ms: number, signal?: AbortSignal): Promise<void>;
  /** Wakes every follower of the job (new bytes or a state change). */
  notify(jobId: number): void;
}

/**
 * Opens the log store in `dir`. `onWrite` hears the outcome of every write (null for success); a write
 * that fails (a full disk) leaves the file as it was, so the writer's resend lands where it should.
 */
export function openLogStore(dir: string, onWrite: (err: unknown) => void = () => {}): LogStore {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const open = new Map<number, OpenLog>();
  const waiters = new Map<number, Set<() => void>>();
  const path = (jobId: number) => join(dir, `${jobId}.log`);

  const handle = (jobId: number): OpenLog => {
    let h = open.get(jobId);
    if (!h) {
      const fd = openSync(path(jobId), "a", 0o600);
      h = { fd, size: fstatSync(fd).size };
      open.set(jobId, h);
    }
    return h;
  };

  /** Appends all of `bytes` or nothing: a short write (ENOSPC) is cut off again before the error goes on. */
  const write = (h: OpenLog, bytes: Uint8Array) => {
    let done = 0;
    try {
      while (done < bytes.length) done += writeSync(h.fd, bytes, done);
    } catch (err) {
      try {
        ftruncateSync(h.fd, h.size);
      } catch {
        // Nothing more can be done here; the size we keep is still what a reader may trust.
      }
      onWrite(err);
      throw err;
    }
    h.size += bytes.length;
    onWrite(null);
  };

  const notify = (jobId: number) => {
    const set = waiters.get(jobId);
    if (!set) return;
    waiters.delete(jobId);
    for (const w of set) w();
  };

  return {
    path,
    size(jobId) {
      const h = open.get(jobId);
      if (h) return h.size;
      try {
        return statSync(path(jobId)).size;
      } catch {
        return 0;
      }
    },
    writeAt(jobId, at, data) {
      const h = handle(jobId);
      if (at > h.size) return false;
      const skip = h.size - at;
      if (skip >= data.length) return true;
      const part = skip > 0 ? data.subarray(skip) : data;
      write(h, part);
      notify(jobId);
      return true;
    },
    append(jobId, text) {
      const h = handle(jobId);
      write(h, new TextEncoder().encode(text));
      notify(jobId);
      return h.size;
    },
    close(jobId) {
      const h = open.get(jobId);
      if (h) {
        closeSync(h.fd);
        open.delete(jobId);
      }
      notify(jobId);
    },
    waitForChange(jobId, ms, signal) {
      return new Promise<void>((resolve) => {
        let set = waiters.get(jobId);
        if (!set) {
          set = new Set();
          waiters.set(jobId, set);
        }
        const done = () => {
          clearTimeout(timer);
          set.delete(done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, ms);
        signal?.addEventListener("abort", done);
        set.add(done);
      });
    },
    notify,
  };
}

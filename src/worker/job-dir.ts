import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  open as openFd,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { mkdir, open, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type JobSpec, type Outcome, OutcomeSchema } from "../protocol/job.ts";

/*
 * Each attempt a worker runs has a directory DATA/worker/jobs/ID.ATTEMPT holding the log and, once it
 * ends, outcome.json. outcome.json is the outbox entry: it stays until the master acks it, so a result
 * survives a master restart, a dropped connection or a worker restart.
 *
 * The data disk is slow at creating, syncing and deleting files (milliseconds each on a disk mounted with
 * `discard`), and a worker runs many short jobs: those calls run on the runtime's thread pool (the async
 * ones here), never on the thread that serves the connection and every other job.
 */

/** The key of an attempt everywhere in the worker, and its directory's name: `ID.ATTEMPT`. */
export const jobKey = (jobId: number, attempt: number) => `${jobId}.${attempt}`;

/** An attempt's directory on the worker. */
export interface JobDir {
  jobId: number;
  attempt: number;
  dir: string;
}

/** Where the attempt's directory goes under `root`; nothing is made yet (createJobDir). */
export function jobDirOf(root: string, spec: Pick<JobSpec, "id" | "attempt">): JobDir {
  return { jobId: spec.id, attempt: spec.attempt, dir: join(root, jobKey(spec.id, spec.attempt)) };
}

/**
 * Makes the attempt's directory (private to the worker's user) and writes its spec.json, mode 0600: it
 * holds the job's secrets and credential, which the artifact delivery reads back after a restart.
 */
export async function createJobDir(d: JobDir, spec: JobSpec): Promise<void> {
  await mkdir(d.dir, { recursive: true, mode: 0o700 });
  await writeFile(join(d.dir, "spec.json"), JSON.stringify(spec), { mode: 0o600 });
}

/** Opens (creating) the attempt's log for appending; the plain descriptor is the caller's to close. */
export function openLog(d: JobDir): Promise<number> {
  // Not a FileHandle, which closes its descriptor when it is collected: the runner and the pump keep the
  // number itself.
  return new Promise((resolve, reject) =>
    openFd(logPath(d), "a+", 0o600, (err, fd) => (err ? reject(err) : resolve(fd))),
  );
}

/** The attempt's own credential from its spec.json; null when it has none or the file is unreadable. */
export function jobCredential(d: JobDir): string | null {
  try {
    const spec = JSON.parse(readFileSync(join(d.dir, "spec.json"), "utf8")) as { credential?: unknown };
    return typeof spec.credential === "string" ? spec.credential : null;
  } catch {
    // Torn or missing: the upload is then refused as unauthenticated and the job's log says so.
    return null;
  }
}

/** The attempt's log file: stdout and stderr of the job, interleaved as written. */
export const logPath = (d: JobDir) => join(d.dir, "log");

/**
 * Writes the first outcome of an attempt, without waiting for the disk: once it resolves the file survives
 * a crash of the worker (it is in the kernel's cache), and syncOutcome makes it survive a power loss. One
 * write(2) of a few hundred bytes: a crash leaves it whole or absent, and a torn file (a power loss before
 * the sync) reads as no outcome, an interrupted attempt.
 */
export async function writeFirstOutcome(d: JobDir, outcome: Outcome, logSize: number): Promise<void> {
  await writeFile(join(d.dir, "outcome.json"), JSON.stringify({ outcome, logSize }), { mode: 0o600 });
}

/** Makes outcome.json and its directory entry durable (fsync of both). */
export async function syncOutcome(d: JobDir): Promise<void> {
  for (const path of [join(d.dir, "outcome.json"), d.dir]) {
    const fh = await open(path, "r");
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}

/** Writes the outcome atomically and durably (temp file, fsync, rename, fsync of the directory). */
export function writeOutcome(d: JobDir, outcome: Outcome, logSize: number) {
  const tmp = join(d.dir, "outcome.json.tmp");
  const fd = openSync(tmp, "w", 0o600);
  writeFileSync(fd, JSON.stringify({ outcome, logSize }));
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, join(d.dir, "outcome.json"));
  const dfd = openSync(d.dir, "r");
  fsyncSync(dfd);
  closeSync(dfd);
}

/** The recorded outcome of a finished attempt, or null when it has none (it was interrupted). */
export function readOutcome(d: JobDir): { outcome: Outcome; logSize: number } | null {
  const file = join(d.dir, "outcome.json");
  if (!existsSync(file)) return null;
  try {
    const raw = JSON.parse(readFileSync(file, "utf8"));
    return { outcome: OutcomeSchema.parse(raw.outcome), logSize: Number(raw.logSize) };
  } catch {
    // outcome.json is written by rename, so it is whole or absent; one that does not parse (a disk
    // fault, an edit by hand) makes the attempt an interrupted one, which the master re-queues.
    return null;
  }
}

/** Removes the attempt's directory and all it holds. */
export function removeJobDir(d: JobDir) {
  rmSync(d.dir, { recursive: true, force: true });
}

/** removeJobDir on the runtime's thread pool; never rejects (a leftover is removed by the next start). */
export async function removeJobDirLater(d: JobDir): Promise<void> {
  await rm(d.dir, { recursive: true, force: true }).catch(() => {});
}

/** Every job directory present, split into finished (outbox) and interrupted (no outcome). */
export function scanJobDirs(root: string): { finished: JobDir[]; interrupted: JobDir[] } {
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const finished: JobDir[] = [];
  const interrupted: JobDir[] = [];
  for (const name of readdirSync(root)) {
    const m = /^(\d+)\.(\d+)$/.exec(name);
    if (!m) continue;
    const d = { jobId: Number(m[1]), attempt: Number(m[2]), dir: join(root, name) };
    (readOutcome(d) ? finished : interrupted).push(d);
  }
  return { finished, interrupted };
}

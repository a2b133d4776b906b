import { appendFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { type AppError, coerceError, errorFrom } from "../lib/errors.ts";
import { artifactNameProblem } from "../lib/names.ts";
import { formatSize } from "../lib/size.ts";
import type { Outcome } from "../protocol/job.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";
import { type JobDir, jobCredential, logPath, writeOutcome } from "./job-dir.ts";

/*
 * Delivers a finished job's artifacts (the files in its out dir, those in subdirectories as `dir/file`) to
 * the master before the job is reported finished, so a job that is terminal always has its artifacts.
 * With the sandbox runner the out dir holds only what Kiln wrote there itself (collection and uploads);
 * links are never followed all the same, as the process runner's job writes it directly.
 *
 * Each file is hashed, then sent in chunks of CHUNK bytes, each a PUT that names its offset: the master
 * keeps what arrived, so after a cut connection, a master restart or a worker restart the upload goes on
 * from the offset the master reports. A file the master refuses (too large, not the content claimed
 * twice) is not retried: the job's log and outcome say it was not delivered. A marker file records that
 * delivery is done, so a worker restarted with the job still in its outbox does not upload again.
 */

export class RetryLater extends Error {}

// Bytes per upload request: small enough that neither side holds much of it in memory, large enough that
// a request's own cost (a few hundred microseconds on loopback) is lost in its transfer time.
const CHUNK = 8 * 2 ** 20;

/** Regular files below `dir` as artifact names, in order; anything else is reported through `skipped`. */
function listFiles(dir: string, skipped: (name: string, why: string) => void, prefix = ""): string[] {
  if (!existsSync(dir)) return [];
  const names: string[] = [];
  const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const name = `${prefix}${e.name}`;
    const problem = artifactNameProblem(name);
    if (problem) skipped(name, `its name is not allowed: ${problem}`);
    else if (e.isDirectory()) names.push(...listFiles(join(dir, e.name), skipped, `${name}/`));
    else if (e.isFile()) names.push(name);
    else skipped(name, "not a regular file");
  }
  return names;
}

async function sha256(path: string): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) h.update(chunk);
  return h.digest("hex");
}

/**
 * The sha256 of an out-dir file, hashed once per delivery however often it resumes: kept in the job dir
 * (`artifact-hashes.json`) with the size and mtime it was taken at, so a restarted worker does not read
 * a 2 GiB file again either. A file changed since is hashed anew.
 */
async function cachedSha256(jobDir: string, name: string, path: string, fresh = false): Promise<string> {
  const file = join(jobDir, "artifact-hashes.json");
  let cache: Record<string, { size: number; mtimeMs: number; sha256: string }> = {};
  try {
    cache = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    // None yet (or torn by a crash while written): hashing again is always correct.
  }
  const st = statSync(path);
  const hit = cache[name];
  if (!fresh && hit && hit.size === st.size && hit.mtimeMs === st.mtimeMs) return hit.sha256;
  const hash = await sha256(path);
  cache[name] = { size: st.size, mtimeMs: st.mtimeMs, sha256: hash };
  writeFileSync(file, JSON.stringify(cache));
  return hash;
}

interface Target {
  master: string;
  /** The worker's own credentials: on a TLS master, the client certificate the connection needs. */
  auth: MasterAuth;
  /** The attempt's own credential, which the master asks of every upload of it. */
  credential: string;
  jobId: number;
  attempt: number;
}

/** A file the master will never take, and why; delivery goes on with the next one. */
class Refused extends Error {}
/** The attempt is no longer the job's (re-queued or ended meanwhile): nothing more is delivered. */
class Withdrawn extends Error {}

/**
 * Sends one file, resuming from the offset the master holds. Resolves when the master has recorded it;
 * throws RetryLater (the master cannot be reached or cannot write), Refused or Withdrawn.
 */
async function uploadFile(
  t: Target,
  jobDir: string,
  name: string,
  path: string,
  log: ConsolaInstance,
): Promise<void> {
  const st = statSync(path);
  const size = st.size;
  const url = `${t.master.replace(/\/$/, "")}/api/v1/worker/artifacts/${t.jobId}/${t.attempt}/${encodeURIComponent(name)}`;
  const call = async (init: RequestInit & { headers: Record<string, string> }) => {
    try {
      const method = init.method ?? "GET";
      const headers = {
        ...init.headers,
        ...(await t.auth.headers(method, url)),
        authorization: `Bearer ${t.credential}`,
      };
      return await fetch(url, { ...init, headers, tls: t.auth.tls() });
    } catch (err) {
      throw new RetryLater(
        `cannot reach the master to deliver artifact ${name}: ${coerceError(err).message}`,
        {
          cause: err,
        },
      );
    }
  };
  let hash = await cachedSha256(jobDir, name, path);
  let mismatches = 0;
  for (;;) {
    const claim = {
      "x-kiln-sha256": hash,
      "x-kiln-size": String(size),
      "x-kiln-mode": (st.mode & 0o777).toString(8),
    };
    const state = await call({ headers: claim });
    if (!state.ok) await refusal(state, name);
    let offset = ((await state.json()) as { offset: number }).offset;
    for (;;) {
      const end = Math.min(size, offset + CHUNK);
      const res = await call({
        method: "PUT",
        headers: { ...claim, "x-kiln-offset": String(offset) },
        // A slice of the file, read as it is sent; never more than one chunk of it in memory.
        body: Bun.file(path).slice(offset, end),
      });
      if (res.status === 202) {
        offset = ((await res.json()) as { offset: number }).offset;
        continue;
      }
      if (res.ok) return;
      const e = await errorFrom(res);
      if (e.code === "UPLOAD_OFFSET") break; // Ask where the master stands, then go on from there.
      if (e.code === "CHECKSUM_MISMATCH" && ++mismatches < 2) {
        // The file changed under us, or bytes were damaged on the way: hash again and start over once.
        log.warn(`job ${t.jobId}: artifact ${name}: ${e.message}`);
        hash = await cachedSha256(jobDir, name, path, true);
        break;
      }
      await refusal(res, name, e);
    }
  }
}

/** Turns a failed answer into RetryLater (5xx), Withdrawn (the attempt is over) or Refused. */
async function refusal(res: Response, name: string, known?: AppError): Promise<never> {
  const e = known ?? (await errorFrom(res));
  if (res.status >= 500)
    throw new RetryLater(`the master answered ${res.status} to artifact ${name}: ${e.message}`, { cause: e });
  // The attempt was re-queued or ended meanwhile: its credential ended with it.
  if (e.code === "JOB_NOT_ACTIVE" || e.code === "JOB_CREDENTIAL_EXPIRED") throw new Withdrawn(e.message);
  throw new Refused(`the master refused it (${res.status} ${e.code}): ${e.message}`);
}

/** What changed in a job's result because an artifact could not be delivered. */
export interface Undelivered {
  outcome: Outcome;
  logSize: number;
}

/**
 * Uploads every regular file below DIR/out; throws RetryLater when the master cannot be reached or cannot
 * write (the next call resumes). Resolves to the job's new outcome and log size when a file was refused
 * for good: the job's log says which and why, and a job that had succeeded now failed with reason
 * `artifact_upload`. Resolves to null when everything arrived (or the attempt is no longer the job's).
 */
export async function deliverArtifacts(o: {
  job: JobDir;
  outcome: Outcome;
  master: string;
  auth: MasterAuth;
  log: ConsolaInstance;
}): Promise<Undelivered | null> {
  const { dir, jobId, attempt } = o.job;
  const done = join(dir, "artifacts-delivered");
  if (existsSync(done)) return null;
  const out = join(dir, "out");
  const names = listFiles(out, (name, why) =>
    o.log.warn(`job ${jobId}: ${JSON.stringify(name)} in $KILN_OUT is not kept: ${why}`),
  );
  // Nothing to deliver (most jobs): no marker either, which would be one more file to write and delete;
  // after a restart the empty listing is as quick to repeat.
  if (names.length === 0) return null;
  // Each attempt's uploads carry its own credential, which the master gave with the assignment.
  const credential = jobCredential(o.job) ?? "";
  const refused: string[] = [];
  for (const name of names) {
    try {
      await uploadFile(
        { master: o.master, auth: o.auth, credential, jobId, attempt },
        dir,
        name,
        join(out, name),
        o.log,
      );
    } catch (err) {
      if (err instanceof RetryLater) throw err;
      if (err instanceof Withdrawn) {
        o.log.info(
          `job ${jobId}: attempt ${attempt} is no longer the job's; its artifacts are not delivered`,
        );
        break;
      }
      const why = err instanceof Refused ? err.message : `it could not be read: ${coerceError(err).message}`;
      const size = statSync(join(out, name), { throwIfNoEntry: false })?.size;
      refused.push(`${name}${size === undefined ? "" : ` (${formatSize(size)})`}: ${why}`);
      o.log.warn(`job ${jobId}: artifact ${name} was not delivered: ${why}`);
    }
  }
  if (refused.length === 0) {
    writeFileSync(done, "");
    return null;
  }
  const changed = undelivered(o.job, o.outcome, refused);
  writeFileSync(done, "");
  return changed;
}

/** Says in the job's log and outcome which artifacts did not reach the master; writes the outcome anew. */
function undelivered(job: JobDir, outcome: Outcome, refused: string[]): Undelivered {
  const log = logPath(job);
  // A restart between here and the delivery marker must not write the lines twice.
  const noted = join(job.dir, "artifacts-undelivered");
  if (!existsSync(noted)) {
    appendFileSync(log, refused.map((r) => `\n--- kiln: artifact not delivered: ${r} ---\n`).join(""));
    writeFileSync(noted, "");
  }
  const message = `artifacts not delivered: ${refused.join("; ")}`;
  const next: Outcome =
    outcome.state === "succeeded"
      ? { ...outcome, state: "failed", reason: "artifact_upload", message }
      : { ...outcome, message: `${outcome.message ?? outcome.state}; ${message}` };
  const logSize = statSync(log, { throwIfNoEntry: false })?.size ?? 0;
  writeOutcome(job, next, logSize);
  return { outcome: next, logSize };
}

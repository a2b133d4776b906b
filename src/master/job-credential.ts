import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { getJob } from "../store/jobs.ts";
import type { Db } from "../store/open.ts";
import type { JobRow } from "../store/schema.ts";

/*
 * A job's credential: minted by the master when it assigns an attempt, sent to the worker with the
 * assignment, and presented by the worker for that attempt's own requests (its artifact uploads). It
 * names its job (`kilnjob_ID_SECRET`) so checking it is one read by primary key; only its sha256 is
 * stored, in the job's row, where the next attempt's replaces it. It is valid while that attempt is
 * assigned or running, and for nothing but that job.
 */

const PREFIX = "kilnjob_";

/** A new credential for job `jobId`'s next attempt: the secret for the worker, the hash for the row. */
export function newJobCredential(jobId: number): { secret: string; hash: string } {
  const secret = `${PREFIX}${jobId}_${randomBytes(24).toString("base64url")}`;
  return { secret, hash: hashCredential(secret) };
}

const hashCredential = (secret: string) => createHash("sha256").update(secret).digest("hex");

/** True when `secret` has the shape of a job credential (as opposed to an API token). */
export const isJobCredential = (secret: string) => secret.startsWith(PREFIX);

/**
 * The job whose current attempt `secret` belongs to, while that attempt is assigned or running;
 * undefined for a credential that is malformed, unknown, of an earlier attempt, or of an ended job.
 */
export async function findJobByCredential(db: Db, secret: string): Promise<JobRow | undefined> {
  const m = /^kilnjob_(\d{1,15})_[A-Za-z0-9_-]{16,128}$/.exec(secret);
  if (!m) return undefined;
  const row = await getJob(db, Number(m[1]));
  if (!row?.credentialHash || (row.state !== "assigned" && row.state !== "running")) return undefined;
  const want = Buffer.from(row.credentialHash, "hex");
  const got = Buffer.from(hashCredential(secret), "hex");
  return want.length === got.length && timingSafeEqual(want, got) ? row : undefined;
}

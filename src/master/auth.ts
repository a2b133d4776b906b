import { AppError } from "../lib/errors.ts";
import { findToken, type Role } from "../store/tokens.ts";
import type { MasterContext } from "./context.ts";
import { findJobByCredential, isJobCredential } from "./job-credential.ts";

/**
 * Who is asking: an API token (its id, name, role and, for a scoped token, its one project), or a job's
 * own credential (role `job`, with the job and attempt it belongs to and that job's project).
 */
export interface Caller {
  /** The token's id; for a job credential `job:ID`. */
  tokenId: string;
  name: string;
  role: Role | "job";
  project: string | null;
  /** When the token expires (ms since the epoch); null when it does not. */
  expiresAt: number | null;
  /** Set for a job credential only. */
  job?: { id: number; attempt: number };
}

/** The ranks of the client roles; `worker` and `job` are ranked below every one of them. */
export const RANK: Record<Role | "job", number> = {
  viewer: 1,
  submitter: 2,
  operator: 3,
  admin: 4,
  worker: 0,
  job: 0,
};

const unauthenticated = (message: string) => new AppError("UNAUTHENTICATED", message, { status: 401 });

/** A 403 FORBIDDEN that says what the request would need. */
export const forbidden = (message: string) => new AppError("FORBIDDEN", message, { status: 403 });

/** The bearer secret of an `Authorization` header, or null when there is none (or it is not Bearer). */
export function bearerOf(header: string | null | undefined): string | null {
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? "");
  return m ? m[1]! : null;
}

/**
 * Identifies the caller behind an `Authorization: Bearer ...` header: an API token that is neither revoked
 * nor expired, or the credential of a job attempt that is assigned or running. Throws a 401 otherwise;
 * the message never repeats the secret.
 */
export async function identify(ctx: MasterContext, header: string | null | undefined): Promise<Caller> {
  const secret = bearerOf(header);
  if (!secret) {
    throw unauthenticated("a token is required: pass --token or set KILN_TOKEN (Authorization: Bearer ...)");
  }
  if (isJobCredential(secret)) {
    const job = await findJobByCredential(ctx.store.db, secret);
    if (!job) {
      throw new AppError(
        "JOB_CREDENTIAL_EXPIRED",
        "this job credential is not valid: its attempt is no longer assigned or running (a job's credential lasts as long as its attempt)",
        { status: 401 },
      );
    }
    return {
      tokenId: `job:${job.id}`,
      name: `job ${job.id}`,
      role: "job",
      project: job.project,
      expiresAt: null,
      job: { id: job.id, attempt: job.attempt },
    };
  }
  const row = await findToken(ctx.store.db, secret);
  if (!row) throw unauthenticated("the token is unknown, revoked or expired: ask an admin for a new one");
  return {
    tokenId: row.id,
    name: row.name,
    role: row.role as Role,
    project: row.project,
    expiresAt: row.expiresAt,
  };
}

/**
 * Throws 403 when `caller` is limited to a project other than `project`: for requests whose body names
 * the project (a submit) rather than a path that names a job.
 */
export function requireProject(caller: Caller, project: string) {
  if (caller.project && caller.project !== project) {
    throw forbidden(
      `the token is limited to project ${caller.project}; this request is for project ${project}`,
    );
  }
}

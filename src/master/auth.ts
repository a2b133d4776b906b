import { AppError } from "../lib/errors.ts";
import { findToken, type Role } from "../store/tokens.ts";
import { CERT_HEADER, type VerifiedWorker } from "../tls/proof.ts";
import type { MasterContext } from "./context.ts";
import { findJobByCredential, isJobCredential } from "./job-credential.ts";
import { certCredential } from "./tls.ts";

/**
 * Who is asking: an API token (its id, name, role and, for a scoped token, its one project), a worker
 * known by its certificate on a TLS master (role `worker`, `tokenId` its certificate's credential), or a
 * job's own credential (role `job`, with the job and attempt it belongs to and that job's project).
 */
export interface Caller {
  /** The token's id; `cert:SERIAL` for a worker certificate; `job:ID` for a job credential. */
  tokenId: string;
  name: string;
  role: Role | "job";
  project: string | null;
  /** When the token expires (ms since the epoch); null when it does not (a certificate's end is tls.ts's). */
  expiresAt: number | null;
  /** Set for a job credential only: the job, its attempt, and the repositories it uses (`--use-repo`). */
  job?: { id: number; attempt: number; useRepos: string[] };
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

/** The caller a verified worker certificate stands for. */
export const workerOf = (w: VerifiedWorker): Caller => ({
  tokenId: certCredential(w.serial),
  name: w.worker,
  role: "worker",
  project: null,
  expiresAt: null,
});

/** What a request presents to be identified by: its Authorization header, and the request itself for TLS. */
export interface Presented {
  authorization: string | null | undefined;
  /** The request, whose certificate headers identify a worker on a TLS master. */
  request?: Request;
  ip?: string;
}

/**
 * Identifies the caller: the credential of a job attempt that is assigned or running; on a TLS master, a
 * worker by its certificate and proof (tls.ts, checked against the store every time); else an API token
 * that is neither revoked nor expired. A worker bearer token on a TLS master is refused: workers there
 * join with a join token. Throws a 401 otherwise; the message never repeats the secret.
 */
export async function identify(ctx: MasterContext, p: Presented): Promise<Caller> {
  const secret = bearerOf(p.authorization);
  if (secret && isJobCredential(secret)) {
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
      job: { id: job.id, attempt: job.attempt, useRepos: job.useRepos },
    };
  }
  if (ctx.tls && p.request?.headers.get(CERT_HEADER) != null)
    return workerOf(await ctx.tls.identify(p.request, p.ip));
  if (!secret) {
    throw unauthenticated("a token is required: pass --token or set KILN_TOKEN (Authorization: Bearer ...)");
  }
  const row = await findToken(ctx.store.db, secret);
  if (!row) throw unauthenticated("the token is unknown, revoked or expired: ask an admin for a new one");
  if (ctx.tls && row.role === "worker")
    throw new AppError(
      "WORKER_CERT_MISSING",
      "this master serves TLS: workers present their certificate, not a token; join with `kiln worker --join TOKEN` (a token from `kiln token create --role worker`)",
      { status: 401 },
    );
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

import { z } from "zod";
import { readJson } from "../lib/body.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { logOnce } from "../lib/log-once.ts";
import type { Authority } from "./authority.ts";
import {
  checkCsr,
  type IssuedCertificate,
  MAX_CSR_BYTES,
  signWorkerCertificate,
  WORKER_CERT_LIFETIME_MS,
} from "./issue.ts";
import { hashJoinSecret } from "./join-token.ts";
import { CERT_HEADER, type CertificateLookup, type VerifiedWorker, verifyWorker } from "./proof.ts";

/*
 * The master's side of enrollment, as one fetch-style handler the master mounts before its router (and
 * the tests mount in their own Bun.serve), so the rules live here and nowhere else:
 *   GET  /api/v1/tls/ca      the certificate workers pin, unauthenticated: it is public, and a worker
 *                            fetches it without verification and checks its fingerprint itself;
 *   POST /api/v1/tls/enroll  {secret, csr}: redeem a join token, get a signed client certificate;
 *   POST /api/v1/tls/renew   {csr} with the worker's current certificate and proof: a fresh certificate.
 */

/** The paths the enrollment handler serves. */
export const TLS_ROUTES = {
  ca: "/api/v1/tls/ca",
  enroll: "/api/v1/tls/enroll",
  renew: "/api/v1/tls/renew",
} as const;

/** The store side of enrollment (store/enrollment.ts `certificateLedger` builds one). */
export interface CertificateLedger extends CertificateLookup {
  redeem(
    secretHash: string,
    worker: string,
    issue: () => Promise<IssuedCertificate>,
    now?: number,
  ): Promise<IssuedCertificate>;
  renew(
    fromSerial: string,
    worker: string,
    issue: () => Promise<IssuedCertificate>,
    now?: number,
  ): Promise<IssuedCertificate>;
}

/** Where refusals and enrollments are told; refusals once at warn level with who and why. */
export interface EnrollmentLog {
  info(msg: string): void;
  warn(msg: string): void;
  debug?(msg: string): void;
}

/*
 * The bodies of the enrollment routes, this route family's schemas (the master's other families keep
 * theirs in src/protocol/api.ts). checkCsr then reads the CSR itself and says what is wrong with it.
 */
// The CSR bound, plus room for JSON escaping of its line breaks; checkCsr refuses a longer PEM.
const csr = z
  .string()
  .min(1, "csr is required: a PEM certificate request")
  .max(2 * MAX_CSR_BYTES, `csr is larger than ${MAX_CSR_BYTES} bytes`);
/** POST /api/v1/tls/enroll and /api/v1/tls/renew. */
export const TlsApi = {
  // A CSR and a 43-character secret in JSON; twice the CSR bound leaves room for escaping.
  maxBytes: 2 * MAX_CSR_BYTES + 1024,
  enroll: z.strictObject({
    secret: z.string().min(1, "secret is required: the join token's secret").max(200),
    csr,
  }),
  renew: z.strictObject({ csr }),
};

const errorResponse = (e: AppError) =>
  Response.json({ error: { code: e.code, message: e.message } }, { status: e.status });

/**
 * Builds the handler for the enrollment routes: it answers those paths (errors as
 * `{"error":{"code","message"}}`, 4xx for anything the caller did wrong) and returns undefined for any
 * other path. `now` is for tests that move the clock.
 */
export function enrollmentHandler(opts: {
  authority: Pick<Authority, "ca" | "caKey" | "anchorPem">;
  ledger: CertificateLedger;
  log: EnrollmentLog;
  now?: () => number;
  /** How long the certificates it signs live (master.tls_worker_lifetime); 30 days when not given. */
  lifetimeMs?: number;
}): (req: Request, ip?: string) => Promise<Response | undefined> {
  const now = opts.now ?? Date.now;
  const life = opts.lifetimeMs ?? WORKER_CERT_LIFETIME_MS;
  const { authority, ledger, log } = opts;
  // One record per path and code, then a count: a client hammering enrollment cannot flood the log.
  const noteRefusal = logOnce((msg) => log.warn(msg));
  const failed = logOnce((msg) => log.warn(msg));
  return async (req, ip = "?") => {
    const path = new URL(req.url).pathname;
    if (path !== TLS_ROUTES.ca && path !== TLS_ROUTES.enroll && path !== TLS_ROUTES.renew) return undefined;
    let who = `a worker from ${ip}`;
    try {
      if (path === TLS_ROUTES.ca) {
        if (req.method !== "GET")
          throw new AppError("METHOD_NOT_ALLOWED", `${path} takes GET`, { status: 405 });
        return new Response(authority.anchorPem, { headers: { "content-type": "application/x-pem-file" } });
      }
      if (req.method !== "POST")
        throw new AppError("METHOD_NOT_ALLOWED", `${path} takes POST`, { status: 405 });
      if (path === TLS_ROUTES.enroll) {
        const body = await readJson(req, TlsApi.enroll, { max: TlsApi.maxBytes });
        const secret = body.secret;
        const { csr, worker } = await checkCsr(body.csr);
        who = `worker ${worker} from ${ip}`;
        const at = now();
        const cert = await ledger.redeem(
          hashJoinSecret(secret),
          worker,
          () => signWorkerCertificate(authority, csr, worker, at, life),
          at,
        );
        log.info(
          `enrolled ${who}: certificate ${cert.serial} until ${new Date(cert.notAfter).toISOString()}`,
        );
        return Response.json({ certificate: cert.pem, ca: authority.anchorPem, notAfter: cert.notAfter });
      }
      const at = now();
      const current: VerifiedWorker = await verifyWorker(req, authority.ca, ledger, at);
      who = `worker ${current.worker} from ${ip}`;
      const { csr, worker } = await checkCsr(
        (await readJson(req, TlsApi.renew, { max: TlsApi.maxBytes })).csr,
      );
      if (worker !== current.worker)
        throw new AppError(
          "CSR_INVALID",
          `a renewal of ${current.worker}'s certificate cannot name ${worker}: join again to change a worker's name`,
          { status: 400 },
        );
      const cert = await ledger.renew(
        current.serial,
        worker,
        () => signWorkerCertificate(authority, csr, worker, at, life),
        at,
      );
      log.info(`renewed ${who}: certificate ${cert.serial} replaces ${current.serial}`);
      return Response.json({ certificate: cert.pem, notAfter: cert.notAfter });
    } catch (err) {
      if (err instanceof AppError && err.status < 500) {
        noteRefusal(`${path} ${err.code}`, `refused ${path} for ${who}: ${err.code}: ${err.message}`);
        return errorResponse(err);
      }
      const e = coerceError(err);
      failed(path, `failed ${path} for ${who}: ${e.stack ?? e.message}`);
      return errorResponse(
        new AppError("INTERNAL", "the master failed to answer; see its log", { status: 500, cause: e }),
      );
    }
  };
}

/**
 * Identifies the worker on `req` for any other route (the worker websocket, uploads): its certificate,
 * proof and revocation state checked against the store on every call; a refusal is logged with who and
 * why and rethrown as the 401 AppError. With `once`, a refusal it has said already (the same address,
 * path, reason and certificate) goes to debug instead: a revoked worker retrying is said once.
 */
export async function authenticateWorker(
  req: Request,
  opts: {
    authority: Pick<Authority, "ca">;
    ledger: CertificateLookup;
    log: EnrollmentLog;
    ip?: string;
    once?: (key: string) => boolean;
  },
  now = Date.now(),
): Promise<VerifiedWorker> {
  try {
    return await verifyWorker(req, opts.authority.ca, opts.ledger, now);
  } catch (err) {
    const e = coerceError(err);
    const code = err instanceof AppError ? err.code : "INTERNAL";
    const path = new URL(req.url).pathname;
    const msg = `refused a worker from ${opts.ip ?? "?"} on ${path}: ${code}: ${e.message}`;
    // The certificate's last characters tell two workers behind one address apart, without keeping it whole.
    const key = `${opts.ip}|${path}|${code}|${req.headers.get(CERT_HEADER)?.slice(-32) ?? ""}`;
    if (!opts.once || opts.once(key)) opts.log.warn(msg);
    else opts.log.debug?.(msg);
    throw err;
  }
}

import type { ConsolaInstance } from "consola";
import { AppError } from "../lib/errors.ts";
import { firstInWindow } from "../lib/once.ts";
import {
  certificateLedger,
  createJoinToken,
  findCertificate,
  revokeJoinToken,
  revokeWorkerCertificates,
} from "../store/enrollment.ts";
import type { Store } from "../store/open.ts";
import { type Authority, renewalDue } from "../tls/authority.ts";
import { authenticateWorker, enrollmentHandler } from "../tls/enroll.ts";
import { loadIdentity } from "../tls/join.ts";
import { newJoinToken } from "../tls/join-token.ts";
import type { VerifiedWorker } from "../tls/proof.ts";
import { commonName, fingerprint, x509 } from "../tls/x509.ts";
import type { MasterContext } from "./context.ts";
import type { LiveWorker } from "./registry.ts";

/*
 * The master's side of TLS once it serves it: the enrollment routes, who a worker request comes from
 * (its certificate and proof, checked against the store every time), join tokens, and revocation that
 * reaches open connections. The machinery is src/tls; this file wires it to the store, the registry of
 * connected workers and the log.
 */

/** The master's TLS state, present when master.tls is on. */
export interface MasterTls {
  authority: Authority;
  /** Answers the enrollment routes (src/tls/enroll.ts); undefined for any other path. */
  enroll(req: Request, ip?: string): Promise<Response | undefined>;
  /**
   * The worker a request comes from, by its certificate and proof; throws the 401 AppError. Each refusal
   * is logged at warn once an hour per address, reason and certificate, repeats at debug.
   */
  identify(req: Request, ip?: string): Promise<VerifiedWorker>;
}

// A revoked worker retries about once a minute: the operator reads its refusal once, not 60 times an hour.
const REFUSAL_LOG_WINDOW_MS = 3_600_000;

/** The TLS state of a master serving with `authority` over `store`; certificates it signs live `lifetimeMs`. */
export function createMasterTls(
  authority: Authority,
  store: Store,
  lifetimeMs: number,
  log: ConsolaInstance,
): MasterTls {
  const ledger = certificateLedger(store);
  const once = firstInWindow(REFUSAL_LOG_WINDOW_MS);
  return {
    authority,
    enroll: enrollmentHandler({ authority, ledger, log, lifetimeMs }),
    identify: (req, ip) => authenticateWorker(req, { authority, ledger, log, ip, once }),
  };
}

// Long enough to carry a token to a new machine within the working day, short enough that one forgotten
// in a chat or a ticket stops working by the next.
const JOIN_TOKEN_TTL_MS = 24 * 3_600_000;

/** Creates a join token (single-use) that pins this master's CA; it expires `ttlMs` from now (a day by default). */
export async function createWorkerJoinToken(
  ctx: MasterContext,
  o: { ttlMs?: number | null; createdBy: string },
): Promise<{ id: string; token: string; expiresAt: number }> {
  const tls = requireTls(ctx);
  const { token, secretHash } = newJoinToken(tls.authority.anchorFingerprint);
  const t = await createJoinToken(ctx.store, {
    secretHash,
    ttlMs: o.ttlMs ?? JOIN_TOKEN_TTL_MS,
    createdBy: o.createdBy,
  });
  ctx.log.info(`join token ${t.id} created by ${o.createdBy}, until ${new Date(t.expiresAt).toISOString()}`);
  return { id: t.id, token, expiresAt: t.expiresAt };
}

function requireTls(ctx: MasterContext): MasterTls {
  if (!ctx.tls)
    throw new AppError(
      "TLS_REQUIRED",
      "join tokens need a master that serves TLS (kiln master --tls, or [master] tls = true)",
    );
  return ctx.tls;
}

/** The credential a worker connection was opened with, as LiveWorker.credential keeps it. */
export const tokenCredential = (id: string) => `token:${id}`;
/** The credential of a connection opened with a certificate, by serial. */
export const certCredential = (serial: string) => `cert:${serial}`;

/**
 * Closes the connections of workers for which `gone` is true, saying why to the worker (websocket close
 * code 4004) and in the master's log; their jobs keep their leases as with any lost connection.
 */
export function closeWorkers(ctx: MasterContext, gone: (w: LiveWorker) => boolean, why: string): string[] {
  const closed: string[] = [];
  for (const w of [...ctx.registry.workers.values()]) {
    if (!gone(w)) continue;
    ctx.registry.remove(w.name, w.ws);
    w.send({ type: "worker.refused", message: why });
    w.ws.close(4004, "credential revoked");
    ctx.log.warn(`closed the connection of worker ${w.name}: ${why}`, { worker: w.name });
    closed.push(w.name);
  }
  return closed;
}

/** Revokes join token `id` (and the certificates from it) and closes their connections; false when unknown. */
export async function revokeJoin(ctx: MasterContext, id: string): Promise<boolean> {
  const row = await revokeJoinToken(ctx.store, id);
  if (!row) return false;
  const serials = new Set(row.certificates.map(certCredential));
  const closed = closeWorkers(
    ctx,
    (w) => serials.has(w.credential),
    `join token ${id} was revoked, and with it this worker's certificate`,
  );
  ctx.log.info(
    `join token ${id} revoked${row.certificates.length ? `, with certificate(s) ${row.certificates.join(", ")}` : ""}${closed.length ? `; closed ${closed.join(", ")}` : ""}`,
  );
  return true;
}

/** Revokes every certificate of worker `name` and closes a connection it opened with one; returns how many were revoked. */
export async function revokeWorker(ctx: MasterContext, name: string): Promise<number> {
  const n = await revokeWorkerCertificates(ctx.store, name, "kiln workers rm");
  closeWorkers(
    ctx,
    (w) => w.name === name && w.credential.startsWith("cert:"),
    `worker ${name} was removed and its certificate revoked: join again with a new token if it should work here`,
  );
  if (n > 0) ctx.log.info(`revoked ${n} certificate(s) of worker ${name}`, { worker: name });
  return n;
}

const serverCertificateWarning = firstInWindow(86_400_000);

/**
 * Says once a day, at warn, that the server certificate being served is past two-thirds of its life:
 * Bun cannot change a listening port's certificate, so the one issued at the next start (or the
 * operator's new file) is served only after a restart. A master restarted now and then never sees this.
 */
export function warnServerCertificateOnce(ctx: MasterContext, now = Date.now()) {
  if (!ctx.tls) return;
  const cert = new x509.X509Certificate(ctx.tls.authority.serverCertPem);
  if (!renewalDue(cert, now) || !serverCertificateWarning("server", now)) return;
  const own = ctx.cfg.master.tls_cert === "";
  ctx.log.warn(
    `the server certificate ends at ${cert.notAfter.toISOString()}: ${own ? "restart the master to serve a new one (it is issued at start)" : `install a new certificate in ${ctx.cfg.master.tls_cert} and restart the master`}`,
  );
}

/**
 * One pass of revocation and expiry for open connections: a worker whose certificate was revoked (by
 * another master process sharing the store, say) or has expired since it connected is disconnected; it
 * connects again with its renewed certificate, or is refused and says why. The server certificate's
 * daily warning (above) rides on the same pass.
 */
export async function checkConnectedCertificatesOnce(ctx: MasterContext) {
  const now = Date.now();
  warnServerCertificateOnce(ctx, now);
  for (const w of [...ctx.registry.workers.values()]) {
    if (!w.credential.startsWith("cert:")) continue;
    const row = await findCertificate(ctx.store.db, w.credential.slice(5));
    const why = !row
      ? "its certificate is not in this master's records"
      : row.revokedAt !== null
        ? `its certificate ${row.serial} was revoked`
        : row.notAfter <= now
          ? `its certificate ${row.serial} expired at ${new Date(row.notAfter).toISOString()}`
          : "";
    if (why) closeWorkers(ctx, (x) => x === w, why);
  }
}

/**
 * The join token `kiln up`'s own worker needs, or undefined when the identity it keeps in `dir` serves:
 * for this worker name, from this master's CA, current and not revoked. A stale one's certificates are
 * revoked first (it is this process's own worker), so the new enrollment is not refused as a duplicate.
 */
export async function localWorkerJoinToken(
  ctx: MasterContext,
  name: string,
  dir: string,
): Promise<string | undefined> {
  const tls = requireTls(ctx);
  const id = loadIdentity(dir);
  if (id) {
    const cert = new x509.X509Certificate(id.certPem);
    const row = await findCertificate(ctx.store.db, cert.serialNumber);
    const serves =
      commonName(cert) === name &&
      fingerprint(new x509.X509Certificate(id.caPem)) === tls.authority.anchorFingerprint &&
      row?.revokedAt === null &&
      row.notAfter > Date.now();
    if (serves) return undefined;
  }
  await revokeWorkerCertificates(ctx.store, name, "kiln up enrolls its worker again");
  return (await createWorkerJoinToken(ctx, { ttlMs: 10 * 60_000, createdBy: "kiln up" })).token;
}

import { webcrypto } from "node:crypto";
import { AppError } from "../lib/errors.ts";
import { commonName, EC_P256, ECDSA_SHA256, fingerprint, type X509Certificate, x509 } from "./x509.ts";

/*
 * How the master learns which worker is on a connection. Found by experiment on Bun 1.4.5 (a Bun.serve
 * with `tls: { cert, key, ca, requestCert: true, rejectUnauthorized }` on 127.0.0.1, clients with fetch and
 * WebSocket passing `tls: { cert, key, ca }`):
 *   - rejectUnauthorized: true refuses in the handshake a client with no certificate (fetch: EPROTO) and one
 *     from another CA (ECONNRESET), on fetch and WebSocket alike; a certificate from `ca` gets through;
 *   - rejectUnauthorized: false lets all three through, with no way to tell them apart afterwards;
 *   - the handler cannot read the peer certificate: neither the Request nor the Server has one (their
 *     prototypes list no such member); node:https in Bun gives `req.socket.authorized` but an empty
 *     `getPeerCertificate()`; only a raw node:tls socket has it, and HTTP and websockets are not on those;
 *   - a client WebSocket takes `{ headers, tls }` in its second argument, and fetch takes `tls`.
 * The master's one port also serves clients that have no certificate, so it cannot insist on one in the
 * handshake. So the worker also presents its certificate in a header and proves it holds the key by
 * signing the request line and a timestamp. Inside TLS nobody else sees that proof; the master checks the
 * chain, validity, clientAuth, the proof, and the certificate's serial against the store (revocation) on
 * every request and websocket upgrade.
 */

/** The header carrying the worker's certificate (base64 DER). */
export const CERT_HEADER = "kiln-worker-cert";
/** The header carrying `v1.<unix ms>.<base64url ECDSA P-256 signature>` over the request. */
export const PROOF_HEADER = "kiln-worker-proof";
// Clocks of a master and its workers drift; five minutes is what Kerberos tolerates, and a proof is only
// ever seen inside TLS, so the window bounds nothing an eavesdropper could use.
const PROOF_WINDOW_MS = 5 * 60_000;
// A P-256 certificate from this CA is under 1 KiB; a bound stops a hostile header costing a parse.
const MAX_CERT_BYTES = 8 * 1024;

/** A worker's enrolled identity: its certificate, its private key, and the certificate it pins the master with. */
export interface WorkerIdentity {
  certPem: string;
  keyPem: string;
  /** The master's trust anchor from enrollment (its CA), checked against the join token's fingerprint. */
  caPem: string;
}

/** Who a verified request came from. */
export interface VerifiedWorker {
  worker: string;
  serial: string;
}

/** What the verifier needs of the store: the recorded certificate by serial (see store/enrollment.ts). */
export interface CertificateLookup {
  find(serial: string): Promise<{ worker: string; revokedAt: number | null } | undefined>;
}

const message = (ts: string, method: string, path: string) =>
  new TextEncoder().encode(`kiln-worker-proof/v1\n${ts}\n${method.toUpperCase()}\n${path}`);

/** The two headers that identify `identity` on a request of `method` to `path` (pathname only) at `now`. */
export async function proofHeaders(
  identity: { certPem: string; key: CryptoKey },
  method: string,
  path: string,
  now = Date.now(),
): Promise<Record<string, string>> {
  const ts = String(now);
  const sig = await webcrypto.subtle.sign(ECDSA_SHA256, identity.key, message(ts, method, path));
  // A PEM certificate's body is its DER in base64: no need to parse it on every request.
  const der = identity.certPem.replace(/-----[A-Z ]+-----|\s/g, "");
  return { [CERT_HEADER]: der, [PROOF_HEADER]: `v1.${ts}.${Buffer.from(sig).toString("base64url")}` };
}

const refused = (code: string, msg: string) => new AppError(code, msg, { status: 401 });

/** What the chain, validity and purpose checks established about one certificate. */
interface CheckedCertificate {
  worker: string;
  serial: string;
  notBefore: number;
  notAfter: number;
  key: CryptoKey;
}

/*
 * Parsing and verifying a certificate with the X.509 library costs milliseconds (its ASN.1 layer), and a
 * worker presents the same certificate on every request: what does not change (the CA's signature, the
 * name, the purpose) is remembered per CA by the certificate's exact bytes, in a bounded map. Validity
 * dates, revocation and the proof are still checked on every call.
 */
const checkedByCa = new WeakMap<X509Certificate, Map<string, CheckedCertificate>>();
// Far more workers than one master serves; each entry is a few hundred bytes.
const MAX_CHECKED = 4096;

async function checkedCertificate(
  certB64: string,
  ca: X509Certificate,
  now: number,
): Promise<CheckedCertificate> {
  let cache = checkedByCa.get(ca);
  if (!cache) {
    cache = new Map();
    checkedByCa.set(ca, cache);
  }
  let checked = cache.get(certB64);
  if (!checked) {
    checked = await checkCertificate(certB64, ca);
    if (cache.size >= MAX_CHECKED) cache.delete(cache.keys().next().value!);
    cache.set(certB64, checked);
  }
  if (checked.notBefore > now || checked.notAfter <= now)
    throw refused(
      "CERTIFICATE_EXPIRED",
      `certificate ${checked.serial} is valid from ${new Date(checked.notBefore).toISOString()} to ${new Date(checked.notAfter).toISOString()}: the worker must renew before it ends, or join again`,
    );
  return checked;
}

async function checkCertificate(certB64: string, ca: X509Certificate): Promise<CheckedCertificate> {
  let cert: X509Certificate;
  try {
    cert = new x509.X509Certificate(Buffer.from(certB64, "base64"));
  } catch (err) {
    throw new AppError("WORKER_CERT_INVALID", "the worker certificate header is not a DER certificate", {
      status: 401,
      cause: err,
    });
  }
  const ok =
    cert.issuer === ca.subject &&
    (await cert.verify({ publicKey: ca.publicKey, signatureOnly: true }).catch(() => false));
  if (!ok)
    throw refused(
      "CERTIFICATE_UNTRUSTED",
      `certificate ${cert.serialNumber} (${cert.subject}) was not issued by this master's CA: enroll with a join token from this master`,
    );
  const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
  if (!eku?.usages.includes(x509.ExtendedKeyUsage.clientAuth))
    throw refused("CERTIFICATE_UNTRUSTED", `certificate ${cert.serialNumber} is not a client certificate`);
  return {
    worker: commonName(cert),
    serial: cert.serialNumber,
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
    key: await cert.publicKey.export(EC_P256, ["verify"]),
  };
}

/**
 * Checks the worker certificate and proof on `req` against the CA `ca` and the store; returns the worker
 * it identifies, or throws a 401 AppError whose code and message say why (missing, untrusted, expired,
 * unknown, revoked, stale or forged).
 */
export async function verifyWorker(
  req: Request,
  ca: X509Certificate,
  lookup: CertificateLookup,
  now = Date.now(),
): Promise<VerifiedWorker> {
  const certB64 = req.headers.get(CERT_HEADER);
  const proof = req.headers.get(PROOF_HEADER);
  if (!certB64 || !proof)
    throw refused(
      "WORKER_CERT_MISSING",
      "no worker certificate: enroll this worker with `kiln worker --join TOKEN` (a join token from `kiln token create --role worker`)",
    );
  if (certB64.length > (MAX_CERT_BYTES * 4) / 3 + 4)
    throw refused("WORKER_CERT_INVALID", "the worker certificate header is too large");
  const cert = await checkedCertificate(certB64, ca, now);
  const { worker, serial } = cert;
  const row = await lookup.find(serial);
  if (!row || row.worker !== worker)
    throw refused(
      "CERTIFICATE_UNKNOWN",
      `certificate ${serial} of ${worker} is not in this master's records (a restored or foreign store?): join again`,
    );
  if (row.revokedAt !== null)
    throw refused(
      "CERTIFICATE_REVOKED",
      `certificate ${serial} of worker ${worker} was revoked at ${new Date(row.revokedAt).toISOString()}: join again with a new token if it should work here`,
    );
  const m = /^v1\.(\d{1,16})\.([A-Za-z0-9_-]{1,200})$/.exec(proof);
  if (!m) throw refused("WORKER_PROOF_INVALID", "the worker proof header is malformed");
  if (Math.abs(Number(m[1]) - now) > PROOF_WINDOW_MS)
    throw refused(
      "WORKER_PROOF_STALE",
      `the worker's proof is dated ${new Date(Number(m[1])).toISOString()}, more than 5 minutes from the master's clock: synchronise the clocks (NTP)`,
    );
  const path = new URL(req.url).pathname;
  const valid = await webcrypto.subtle
    .verify(ECDSA_SHA256, cert.key, Buffer.from(m[2]!, "base64url"), message(m[1]!, req.method, path))
    .catch(() => false);
  if (!valid)
    throw refused(
      "WORKER_PROOF_INVALID",
      `the proof does not match certificate ${serial}: the sender does not hold its key`,
    );
  return { worker, serial };
}

/** The fingerprint of a PEM certificate (first in the text), for logs and comparisons. */
export const pemFingerprint = (pem: string) => fingerprint(new x509.X509Certificate(pem));

import { AppError } from "../lib/errors.ts";
import { isName } from "../lib/names.ts";
import type { Authority } from "./authority.ts";
import {
  certificatePem,
  commonName,
  ECDSA_SHA256,
  fingerprint,
  type Pkcs10CertificateRequest,
  randomSerial,
  x509,
} from "./x509.ts";

const DAY = 86_400_000;
// Short enough that a stolen key stops working within a month even if nobody revokes it, long enough that
// a worker offline over a holiday still renews (renewal starts when a third, ten days, is left).
export const WORKER_CERT_LIFETIME_MS = 30 * DAY;
const CLOCK_SKEW_MS = 5 * 60_000;
// A P-256 CSR is a few hundred bytes; anything near this is not one of ours.
export const MAX_CSR_BYTES = 8 * 1024;

/** A signed worker certificate and what the store records of it. */
export interface IssuedCertificate {
  serial: string;
  fingerprint: string;
  notBefore: number;
  notAfter: number;
  pem: string;
}

/**
 * Checks a worker's PKCS#10 request (PEM): well formed, self-signed by its key, a P-256 key, and a valid
 * worker name as its CN; returns the parsed request and the name, or throws CSR_INVALID (400).
 */
export async function checkCsr(pem: string): Promise<{ csr: Pkcs10CertificateRequest; worker: string }> {
  const bad = (why: string, cause?: unknown) =>
    new AppError("CSR_INVALID", `the certificate request ${why}`, { status: 400, cause });
  if (pem.length > MAX_CSR_BYTES) throw bad(`is larger than ${MAX_CSR_BYTES} bytes`);
  let csr: Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch (err) {
    throw bad("is not a PEM PKCS#10 request", err);
  }
  if (!(await csr.verify().catch(() => false))) throw bad("is not signed by its own key");
  const alg = csr.publicKey.algorithm as { name: string; namedCurve?: string };
  if (alg.name !== "ECDSA" || alg.namedCurve !== "P-256")
    throw bad(`has a ${alg.name} key; Kiln signs ECDSA P-256 keys`);
  const worker = commonName(csr);
  if (!isName(worker))
    throw bad(
      `names the worker "${worker}", which is not a valid worker name (1-63 lowercase letters, digits, ".", "_" or "-")`,
    );
  return { csr, worker };
}

/**
 * Signs a client certificate for `worker` with the master's CA: the request's key, CN and a
 * `urn:kiln:worker:NAME` SAN, clientAuth only, not a CA, valid for `lifetimeMs` (never past the CA).
 * Nothing else the request asks for is copied.
 */
export async function signWorkerCertificate(
  authority: Pick<Authority, "ca" | "caKey">,
  csr: Pkcs10CertificateRequest,
  worker: string,
  now = Date.now(),
  lifetimeMs = WORKER_CERT_LIFETIME_MS,
): Promise<IssuedCertificate> {
  // Back-dated by the clock skew, but never by more than a tenth of the lifetime: a certificate of a
  // minute back-dated by five would count as two-thirds spent, and be renewed again at once.
  const notBefore = now - Math.min(CLOCK_SKEW_MS, lifetimeMs / 10);
  const notAfter = Math.min(now + lifetimeMs, authority.ca.notAfter.getTime());
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: new x509.Name([{ CN: [worker] }]),
    issuer: authority.ca.subject,
    notBefore: new Date(notBefore),
    notAfter: new Date(notAfter),
    publicKey: csr.publicKey,
    signingKey: authority.caKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: "url", value: `urn:kiln:worker:${worker}` }]),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(authority.ca),
    ],
  });
  return {
    serial: cert.serialNumber,
    fingerprint: fingerprint(cert),
    notBefore: cert.notBefore.getTime(),
    notAfter: cert.notAfter.getTime(),
    pem: certificatePem(cert),
  };
}

import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { isIP } from "node:net";
import { hostname } from "node:os";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import { ensurePrivateDir, existsPrivate, writeAtomic } from "./files.ts";
import {
  certificatePem,
  ECDSA_SHA256,
  fingerprint,
  generateKeyPair,
  importSigningKey,
  keyMatchesCertificate,
  privateKeyPem,
  randomSerial,
  readCertificates,
  readPrivateKey,
  type X509Certificate,
  x509,
} from "./x509.ts";

const DAY = 86_400_000;
// Rotating the CA means enrolling every worker again, so it lives long; ten years outlasts the hardware.
export const CA_LIFETIME_MS = 3650 * DAY;
// 397 days is the most any browser accepts for a server certificate; the master issues a new one at start
// once less than a third is left, so a master restarted now and then never serves an expired one.
export const SERVER_LIFETIME_MS = 397 * DAY;
// Certificates are back-dated a little so a peer whose clock is slightly behind accepts a fresh one.
const CLOCK_SKEW_MS = 5 * 60_000;

/** What the master needs to serve TLS, to sign workers' certificates and to tell workers what to pin. */
export interface Authority {
  /** The directory holding the generated files (DATA/tls). */
  dir: string;
  /** The server certificate followed by its chain, and its private key, as PEM for Bun.serve's `tls`. */
  serverCertPem: string;
  serverKeyPem: string;
  /** The certificate workers pin: the root of the server's chain. Join tokens carry its fingerprint. */
  anchorPem: string;
  anchorFingerprint: string;
  /** Kiln's own CA: signs and verifies workers' client certificates (always generated, even with an operator's server certificate). */
  ca: X509Certificate;
  caPem: string;
  caKey: CryptoKey;
}

/** Options of openAuthority; `cert` and `key` are the operator's server certificate and key files, both or neither. */
export interface AuthorityOptions {
  dir: string;
  /** DNS names and IP addresses the server certificate carries; empty means localhost, loopback and this host's name. */
  names: string[];
  cert?: string;
  key?: string;
  now?: number;
  log?: (msg: string) => void;
}

/**
 * Opens the master's certificate authority in `dir`, creating the CA and a server certificate at first
 * need (keys 0600, directory 0700), re-issuing the server certificate when its names changed or a third
 * of its life is left, or loading the operator's certificate and key instead; throws an AppError that
 * says what is wrong with a supplied pair.
 */
export async function openAuthority(opts: AuthorityOptions): Promise<Authority> {
  const now = opts.now ?? Date.now();
  const log = opts.log ?? (() => {});
  ensurePrivateDir(opts.dir);
  const { ca, caKey, caPem } = await ensureCa(opts.dir, now, log);
  if (Boolean(opts.cert) !== Boolean(opts.key))
    throw new AppError(
      "TLS_CONFIG_INVALID",
      "master.tls_cert and master.tls_key go together: give both (your own certificate) or neither (Kiln issues one)",
    );
  if (opts.cert && opts.key) {
    const supplied = loadSuppliedPair(opts.cert, opts.key, now);
    return { dir: opts.dir, ca, caKey, caPem, ...supplied };
  }
  const names = serverNames(opts.names);
  const server = await ensureServerCertificate(opts.dir, ca, caKey, names, now, log);
  return {
    dir: opts.dir,
    ca,
    caKey,
    caPem,
    serverCertPem: server.certPem + caPem,
    serverKeyPem: server.keyPem,
    anchorPem: caPem,
    anchorFingerprint: fingerprint(ca),
  };
}

async function ensureCa(dir: string, now: number, log: (msg: string) => void) {
  const certFile = join(dir, "ca.crt");
  const keyFile = join(dir, "ca.key");
  // A key without its certificate is a creation cut short (the key is written first): no certificate of
  // that CA was ever served, so nobody pinned it, and a new CA is as good.
  if (existsPrivate(keyFile) && existsSync(certFile)) {
    const caPem = readFileSync(certFile, "utf8");
    const [ca] = readCertificates(caPem, certFile);
    const keyPem = readFileSync(keyFile, "utf8");
    if (!keyMatchesCertificate(readPrivateKey(keyPem, keyFile), ca!))
      throw new AppError(
        "TLS_KEY_MISMATCH",
        `${keyFile} is not the key of ${certFile}: restore the pair from a backup, or move both away to create a new CA (every worker must then join again)`,
      );
    return { ca: ca!, caKey: await importSigningKey(keyPem, keyFile), caPem };
  }
  const keys = await generateKeyPair();
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    // A random suffix keeps two masters' CAs apart by name too, not only by key.
    name: `CN=Kiln CA ${hostname()} ${randomBytes(4).toString("hex")}`,
    notBefore: new Date(now - CLOCK_SKEW_MS),
    notAfter: new Date(now + CA_LIFETIME_MS),
    keys,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  // The key first: a certificate without its key would be refused at the next start, a key alone is replaced.
  writeAtomic(keyFile, await privateKeyPem(keys.privateKey), 0o600);
  writeAtomic(certFile, certificatePem(ca), 0o644);
  log(`created the certificate authority in ${dir} (fingerprint sha256 ${fingerprint(ca)})`);
  return { ca, caKey: keys.privateKey, caPem: certificatePem(ca) };
}

/** The names the server certificate carries: the configured ones, or localhost, loopback and this host's name. */
export function serverNames(configured: string[]): string[] {
  // A host name that is no DNS name (an underscore) is left out of the defaults rather than refused.
  const names =
    configured.length > 0
      ? configured
      : ["localhost", "127.0.0.1", "::1", ...(isDnsName(hostname()) ? [hostname()] : [])];
  for (const n of names)
    if (!isIP(n) && !isDnsName(n))
      throw new AppError(
        "TLS_CONFIG_INVALID",
        `master.tls_names: "${n}" is neither an IP address nor a DNS name; list the names and addresses workers use to reach this master`,
      );
  return [...new Set(names)];
}

async function ensureServerCertificate(
  dir: string,
  ca: X509Certificate,
  caKey: CryptoKey,
  names: string[],
  now: number,
  log: (msg: string) => void,
) {
  const certFile = join(dir, "server.crt");
  const keyFile = join(dir, "server.key");
  if (existsPrivate(keyFile) && existsSync(certFile)) {
    const certPem = readFileSync(certFile, "utf8");
    const [cert] = readCertificates(certPem, certFile);
    const keyPem = readFileSync(keyFile, "utf8");
    const why = !keyMatchesCertificate(readPrivateKey(keyPem, keyFile), cert!)
      ? "its key does not match"
      : cert!.issuer !== ca.subject
        ? "another CA issued it"
        : sanOf(cert!).join(",") !== names.join(",")
          ? `its names changed (${sanOf(cert!).join(", ")} -> ${names.join(", ")})`
          : renewalDue(cert!, now)
            ? "it is near its end"
            : "";
    if (!why) return { certPem, keyPem };
    log(`issuing a new server certificate: ${why}`);
  }
  const keys = await generateKeyPair();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${names[0]}`,
    issuer: ca.subject,
    notBefore: new Date(now - CLOCK_SKEW_MS),
    notAfter: new Date(Math.min(now + SERVER_LIFETIME_MS, ca.notAfter.getTime())),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: ECDSA_SHA256,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        names.map((n) => (isIP(n) ? { type: "ip" as const, value: n } : { type: "dns" as const, value: n })),
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(ca),
    ],
  });
  const keyPem = await privateKeyPem(keys.privateKey);
  writeAtomic(keyFile, keyPem, 0o600);
  writeAtomic(certFile, certificatePem(cert), 0o644);
  log(`issued the server certificate for ${names.join(", ")} until ${cert.notAfter.toISOString()}`);
  return { certPem: certificatePem(cert), keyPem };
}

/** The DNS names and IP addresses in a certificate's subjectAltName, in order. */
export function sanOf(cert: X509Certificate): string[] {
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
  return san ? san.names.items.map((n) => n.value) : [];
}

const isDnsName = (n: string) =>
  /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/i.test(n);

/** True when less than a third of the certificate's lifetime is left at `now` (the renewal rule for every Kiln certificate). */
export function renewalDue(cert: X509Certificate, now = Date.now()): boolean {
  const life = cert.notAfter.getTime() - cert.notBefore.getTime();
  return cert.notAfter.getTime() - now < life / 3;
}

/**
 * Loads the operator's server certificate (followed by its chain up to the root) and key; the key must
 * match the first certificate, which must be current and for serverAuth, and the last certificate of the
 * file is what workers pin.
 */
function loadSuppliedPair(certFile: string, keyFile: string, now: number) {
  const read = (f: string, what: string) => {
    try {
      return readFileSync(f, "utf8");
    } catch (err) {
      throw new AppError("TLS_CONFIG_INVALID", `cannot read ${what} ${f}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  };
  const certPem = read(certFile, "master.tls_cert");
  const keyPem = read(keyFile, "master.tls_key");
  const chain = readCertificates(certPem, `master.tls_cert ${certFile}`);
  const leaf = chain[0]!;
  const key = readPrivateKey(keyPem, `master.tls_key ${keyFile}`);
  if (!keyMatchesCertificate(key, leaf))
    throw new AppError(
      "TLS_KEY_MISMATCH",
      `master.tls_key ${keyFile} is not the key of the first certificate in master.tls_cert ${certFile} (${leaf.subject}): give the key that was generated with that certificate`,
    );
  if (leaf.notAfter.getTime() <= now || leaf.notBefore.getTime() > now)
    throw new AppError(
      "TLS_CERT_EXPIRED",
      `master.tls_cert ${certFile} (${leaf.subject}) is valid from ${leaf.notBefore.toISOString()} to ${leaf.notAfter.toISOString()}, not now: install a current certificate`,
    );
  const eku = leaf.getExtension(x509.ExtendedKeyUsageExtension);
  if (eku && !eku.usages.includes(x509.ExtendedKeyUsage.serverAuth))
    throw new AppError(
      "TLS_CERT_INVALID",
      `master.tls_cert ${certFile} (${leaf.subject}) is not for TLS servers (no serverAuth in its extended key usage)`,
    );
  const anchor = chain[chain.length - 1]!;
  if (anchor.subject !== anchor.issuer)
    throw new AppError(
      "TLS_CERT_INVALID",
      `master.tls_cert ${certFile} ends with a certificate issued by ${anchor.issuer}: append the chain up to its root CA, which is what workers pin`,
    );
  return {
    serverCertPem: certPem,
    serverKeyPem: key.export({ type: "pkcs8", format: "pem" }).toString(),
    anchorPem: certificatePem(anchor),
    anchorFingerprint: fingerprint(anchor),
  };
}

/**
 * Bun.serve's `tls` for the master's one port: its certificate and chain, and client certificates
 * requested and checked against Kiln's CA but not required, because the same port serves clients that
 * have none (workers identify with proof.ts on top).
 */
export const serverTls = (a: Authority) => ({
  cert: a.serverCertPem,
  key: a.serverKeyPem,
  ca: a.caPem,
  requestCert: true,
  rejectUnauthorized: false,
});

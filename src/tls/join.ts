import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { AppError, coerceError, errorFrom } from "../lib/errors.ts";
import { renewalDue } from "./authority.ts";
import { TLS_ROUTES } from "./enroll.ts";
import { ensurePrivateDir, existsPrivate, writeAtomic } from "./files.ts";
import { parseJoinToken } from "./join-token.ts";
import { proofHeaders, type WorkerIdentity } from "./proof.ts";
import {
  commonName,
  ECDSA_SHA256,
  fingerprint,
  generateKeyPair,
  importSigningKey,
  privateKeyPem,
  readCertificates,
  x509,
} from "./x509.ts";

/*
 * The worker's side of enrollment. The order is the security argument:
 *   1. fetch the master's CA certificate over TLS without verifying (nothing secret is sent);
 *   2. compare its SHA-256 with the join token's fingerprint, and stop on a mismatch: a man in the middle
 *      (or a token from another master) is found before the secret leaves this host;
 *   3. only then connect again, verifying the master's certificate against exactly that CA (a MITM that
 *      replays the real, public CA certificate fails here, having no certificate the CA signed), and send
 *      the secret with a certificate request for a key that never leaves this host.
 * The identity is kept as DIR/worker.pem (key then certificate, one file so a renewal replaces both at
 * once; 0600) and DIR/ca.pem (the pinned CA), DIR being 0700.
 */

const IDENTITY_FILE = "worker.pem";
// PEM texts are kept in one shape (no surrounding space, one final newline) so a saved identity reads back equal.
const pemText = (s: string) => `${s.trim()}\n`;
const CA_FILE = "ca.pem";

function requireHttps(masterUrl: string): URL {
  const url = new URL(masterUrl);
  if (url.protocol !== "https:")
    throw new AppError(
      "TLS_REQUIRED",
      `${masterUrl}: joining needs an https:// master URL, so the join token's secret never crosses the network in clear`,
    );
  return url;
}

// A CA chain of a few certificates is a few KiB; whoever answers before the fingerprint check is not yet
// trusted, so it does not get to make this worker read without end.
const MAX_CA_BYTES = 64 * 1024;

async function readBounded(res: Response, max: number): Promise<string> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body ?? []) {
    size += chunk.length;
    if (size > max) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`the answer is larger than ${max} bytes, far more than a CA certificate`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/**
 * Fetches the master's CA certificate without verification and returns it only if its SHA-256 equals
 * `expected`; throws TLS_FINGERPRINT_MISMATCH (a man in the middle, or another master) otherwise.
 */
export async function fetchPinnedCa(
  masterUrl: string,
  expected: string,
  pinnedBy = "the join token",
): Promise<string> {
  const url = new URL(TLS_ROUTES.ca, requireHttps(masterUrl));
  let pem: string;
  try {
    // Unverified on purpose: what is fetched is checked against the fingerprint just below.
    const res = await fetch(url, { tls: { rejectUnauthorized: false } });
    if (!res.ok) throw await errorFrom(res);
    pem = await readBounded(res, MAX_CA_BYTES);
  } catch (err) {
    throw new AppError(
      "MASTER_UNREACHABLE",
      `cannot fetch the CA certificate from ${url}: ${coerceError(err).message}`,
      {
        cause: err,
      },
    );
  }
  const certs = readCertificates(pem, `the CA certificate from ${url.host}`);
  const got = fingerprint(certs[0]!);
  if (got !== expected)
    throw new AppError(
      "TLS_FINGERPRINT_MISMATCH",
      `the master at ${url.host} presents the CA ${got}, but ${pinnedBy} pins ${expected}: either something between here and the master intercepts the connection, or ${pinnedBy} is for another master. Nothing was sent; check the address and ${pinnedBy}.`,
    );
  return pem;
}

/**
 * Enrolls this worker as `worker` with the master at `masterUrl` using a join token: pins the master's CA
 * (see above), creates a P-256 key here, gets its certificate signed, and saves the identity in `dir`.
 */
export async function joinMaster(opts: {
  masterUrl: string;
  token: string;
  worker: string;
  dir: string;
}): Promise<WorkerIdentity> {
  const token = parseJoinToken(opts.token);
  const caPem = await fetchPinnedCa(opts.masterUrl, token.fingerprint);
  const keys = await generateKeyPair();
  const csr = await certificateRequest(opts.worker, keys);
  const res = await post(opts.masterUrl, TLS_ROUTES.enroll, { secret: token.secret, csr }, { ca: caPem });
  const certPem = await answerCertificate(res, opts.worker);
  const identity = {
    certPem: pemText(certPem),
    keyPem: pemText(await privateKeyPem(keys.privateKey)),
    caPem: pemText(caPem),
  };
  saveIdentity(opts.dir, identity);
  return identity;
}

async function certificateRequest(worker: string, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: new x509.Name([{ CN: [worker] }]),
    keys,
    signingAlgorithm: ECDSA_SHA256,
  });
  return csr.toString("pem");
}

async function post(
  masterUrl: string,
  path: string,
  body: unknown,
  tls: { ca: string; cert?: string; key?: string },
  headers: Record<string, string> = {},
): Promise<Response> {
  const url = new URL(path, requireHttps(masterUrl));
  try {
    return await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(body),
      tls,
    });
  } catch (err) {
    throw new AppError(
      "MASTER_UNREACHABLE",
      `cannot reach ${url.host} with its certificate verified against the pinned CA: ${coerceError(err).message}`,
      { cause: err },
    );
  }
}

async function answerCertificate(res: Response, worker: string): Promise<string> {
  if (!res.ok) throw await errorFrom(res);
  const { certificate } = (await res.json()) as { certificate?: string };
  const [cert] = readCertificates(certificate ?? "", "the master's answer");
  if (commonName(cert!) !== worker)
    throw new AppError(
      "CERTIFICATE_INVALID",
      `the master signed a certificate for ${commonName(cert!)}, not ${worker}`,
    );
  return certificate!;
}

function saveIdentity(dir: string, id: WorkerIdentity) {
  ensurePrivateDir(dir);
  writeAtomic(join(dir, CA_FILE), id.caPem, 0o644);
  writeAtomic(join(dir, IDENTITY_FILE), pemText(id.keyPem) + pemText(id.certPem), 0o600);
}

/** The identity saved in `dir`, or undefined when this worker has not joined yet. */
export function loadIdentity(dir: string): WorkerIdentity | undefined {
  const file = join(dir, IDENTITY_FILE);
  if (!existsPrivate(file) || !existsSync(join(dir, CA_FILE))) return undefined;
  const blocks = x509.PemConverter.decodeWithHeaders(readFileSync(file, "utf8"));
  const keyBlock = blocks.find((b) => b.type === "PRIVATE KEY");
  const certBlock = blocks.find((b) => b.type === "CERTIFICATE");
  if (!keyBlock || !certBlock)
    throw new AppError(
      "TLS_IDENTITY_INVALID",
      `${file} must hold a private key and a certificate: remove it and join again`,
    );
  return {
    keyPem: pemText(x509.PemConverter.encode(keyBlock.rawData, "PRIVATE KEY")),
    certPem: pemText(x509.PemConverter.encode(certBlock.rawData, "CERTIFICATE")),
    caPem: pemText(readFileSync(join(dir, CA_FILE), "utf8")),
  };
}

/** The `tls` options of fetch or WebSocket for a worker with `identity`: its certificate, and the master verified against the pinned CA. */
export const clientTls = (id: WorkerIdentity) => ({ cert: id.certPem, key: id.keyPem, ca: id.caPem });

/** The headers that identify `identity` on a request of `method` to `path` (see proof.ts). */
export async function identityHeaders(id: WorkerIdentity, method: string, path: string, now = Date.now()) {
  return proofHeaders(
    { certPem: id.certPem, key: await importSigningKey(id.keyPem, "the worker key") },
    method,
    path,
    now,
  );
}

/**
 * Renews the identity in `dir` when less than a third of its certificate's life is left: a new key, a
 * certificate signed over the current mutual-TLS identity, saved in place. Returns whether it renewed.
 */
export async function renewIfDue(opts: { masterUrl: string; dir: string; now?: number }): Promise<boolean> {
  const now = opts.now ?? Date.now();
  const id = loadIdentity(opts.dir);
  if (!id)
    throw new AppError("TLS_NOT_ENROLLED", `no worker identity in ${opts.dir}: join with --join TOKEN first`);
  const current = new x509.X509Certificate(id.certPem);
  if (!renewalDue(current, now)) return false;
  const worker = commonName(current);
  const keys = await generateKeyPair();
  const csr = await certificateRequest(worker, keys);
  const headers = await identityHeaders(id, "POST", TLS_ROUTES.renew, now);
  const res = await post(opts.masterUrl, TLS_ROUTES.renew, { csr }, clientTls(id), headers);
  const certPem = await answerCertificate(res, worker);
  saveIdentity(opts.dir, {
    certPem: pemText(certPem),
    keyPem: pemText(await privateKeyPem(keys.privateKey)),
    caPem: id.caPem,
  });
  return true;
}

import { createHash, createPrivateKey, createPublicKey, type KeyObject, webcrypto } from "node:crypto";
import "@abraham/reflection";
import type * as X509 from "@peculiar/x509";
import { AppError } from "../lib/errors.ts";

/*
 * @peculiar/x509 resolves its algorithms through tsyringe, which needs the Reflect metadata API before it
 * loads. Imports do not give that order in both worlds: Bun's runtime evaluates a CommonJS dependency
 * (x509's build) before its ES siblings, the bundler hoists ES modules (the polyfill) above CommonJS ones.
 * A require in the body runs after every import in both, so the polyfill always comes first.
 */
const x509: typeof X509 = require("@peculiar/x509");

/** A parsed X.509 certificate. */
export type X509Certificate = X509.X509Certificate;
/** A parsed PKCS#10 certificate request. */
export type Pkcs10CertificateRequest = X509.Pkcs10CertificateRequest;

/*
 * The few X.509 operations Kiln needs, on @peculiar/x509 (a maintained X.509 library on WebCrypto) so no
 * ASN.1 is built by hand. Keys are ECDSA P-256: small certificates, fast handshakes, supported by every
 * TLS stack Kiln meets (Bun's BoringSSL, OpenSSL for `openssl verify`).
 */
x509.cryptoProvider.set(webcrypto as unknown as Crypto);

/** The one key algorithm Kiln creates and signs with. */
export const EC_P256 = { name: "ECDSA", namedCurve: "P-256" } as const;
/** ECDSA with SHA-256, the signature every Kiln certificate, request and proof uses. */
export const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" } as const;

/** A fresh extractable P-256 key pair. */
export function generateKeyPair(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC_P256, true, ["sign", "verify"]) as Promise<CryptoKeyPair>;
}

/** The private key as a PKCS#8 PEM ("PRIVATE KEY"), the form Bun's TLS and OpenSSL both read. */
export async function privateKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/**
 * Reads a PEM private key (PKCS#8, SEC1 "EC PRIVATE KEY" or PKCS#1 RSA) and returns it as a node KeyObject;
 * throws TLS_KEY_INVALID naming `where` when it is not one.
 */
export function readPrivateKey(pem: string, where: string): KeyObject {
  try {
    return createPrivateKey(pem);
  } catch (err) {
    throw new AppError("TLS_KEY_INVALID", `${where} is not a PEM private key: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** Imports a P-256 private key PEM for signing with WebCrypto; throws TLS_KEY_INVALID for any other key. */
export async function importSigningKey(pem: string, where: string): Promise<CryptoKey> {
  const key = readPrivateKey(pem, where);
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1")
    throw new AppError("TLS_KEY_INVALID", `${where} must be an ECDSA P-256 key, got ${describeKey(key)}`);
  const der = key.export({ type: "pkcs8", format: "der" });
  return webcrypto.subtle.importKey("pkcs8", der, EC_P256, true, ["sign"]) as Promise<CryptoKey>;
}

const describeKey = (k: KeyObject) =>
  `${k.asymmetricKeyType ?? "unknown"}${k.asymmetricKeyDetails?.namedCurve ? ` ${k.asymmetricKeyDetails.namedCurve}` : ""}`;

/** True when `key` is the private half of the public key in `cert`. */
export function keyMatchesCertificate(key: KeyObject, cert: X509Certificate): boolean {
  const fromKey = createPublicKey(key).export({ type: "spki", format: "der" });
  return Buffer.from(cert.publicKey.rawData).equals(fromKey);
}

/** Parses every certificate in a PEM text, in order; throws TLS_CERT_INVALID naming `where` when there is none. */
export function readCertificates(pem: string, where: string): X509Certificate[] {
  let certs: X509Certificate[];
  try {
    certs = x509.PemConverter.decodeWithHeaders(pem)
      .filter((b) => b.type === "CERTIFICATE")
      .map((b) => new x509.X509Certificate(b.rawData));
  } catch (err) {
    throw new AppError("TLS_CERT_INVALID", `${where} is not a PEM certificate: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (certs.length === 0)
    throw new AppError("TLS_CERT_INVALID", `${where} holds no "BEGIN CERTIFICATE" block`);
  return certs;
}

/** The SHA-256 fingerprint of a certificate's DER, lowercase hex: what `openssl x509 -fingerprint -sha256` shows, without colons. */
export const fingerprint = (cert: X509Certificate) =>
  createHash("sha256").update(Buffer.from(cert.rawData)).digest("hex");

/** The certificate as PEM text ending in a newline. */
export const certificatePem = (cert: X509Certificate) => `${cert.toString("pem")}\n`;

/** The common name (CN) of a certificate's subject, or "" when it has none. */
export function commonName(cert: X509Certificate | Pkcs10CertificateRequest): string {
  return cert.subjectName.getField("CN")[0] ?? "";
}

/** A random positive 128-bit serial number in hex (RFC 5280 4.1.2.2: unique per CA, at most 20 octets). */
export function randomSerial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01; // Positive, and no leading zero octet for DER to strip.
  return Buffer.from(bytes).toString("hex");
}

/** The X.509 library itself, loaded after its polyfill, for what the helpers above do not cover. */
export { x509 };

// The codes OpenSSL (and Bun's fetch and WebSocket after it) give a certificate that did not verify:
// verify(1) "VERIFY ERROR CODES" (SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
// CERT_HAS_EXPIRED, ...) and Node's ERR_TLS_CERT_ALTNAME_INVALID for a name the certificate lacks.
const UNVERIFIED = /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|ALTNAME/;

/** True when `err` says the peer's certificate could not be verified (as opposed to a network failure). */
export function isUnverifiedCertificate(err: unknown): boolean {
  return UNVERIFIED.test(String((err as { code?: unknown } | null)?.code ?? ""));
}

import { createHash, randomBytes } from "node:crypto";
import { AppError } from "../lib/errors.ts";

/*
 * A join token is what an operator copies to a new worker: `kiln1.<fingerprint>.<secret>`.
 *   - `kiln1` names the format, so a later format can be told apart and an API token (`kiln_...`) is not
 *     mistaken for one;
 *   - the fingerprint is the SHA-256 of the DER of the certificate the worker must pin (the master's CA),
 *     64 lowercase hex digits, comparable by eye with `openssl x509 -noout -fingerprint -sha256`;
 *   - the secret is 32 random bytes in base64url (43 characters). The master stores only its SHA-256, with
 *     its expiry and when it was used: it enrolls one worker, once, before it expires.
 * The worker checks the master against the fingerprint before it sends the secret, so a token given to a
 * man in the middle's address reveals nothing usable.
 */

/** A parsed join token. */
export interface JoinToken {
  /** SHA-256 of the pinned certificate's DER, lowercase hex. */
  fingerprint: string;
  /** The single-use secret the master redeems; never log it. */
  secret: string;
}

const PREFIX = "kiln1";

/** A fresh join token for a CA whose fingerprint is `fingerprint`, with the hash the store keeps of its secret. */
export function newJoinToken(fingerprint: string): { token: string; secretHash: string } {
  if (!/^[0-9a-f]{64}$/.test(fingerprint))
    throw new AppError("TLS_FINGERPRINT_INVALID", `"${fingerprint}" is not a SHA-256 fingerprint in hex`);
  const secret = randomBytes(32).toString("base64url");
  return { token: `${PREFIX}.${fingerprint}.${secret}`, secretHash: hashJoinSecret(secret) };
}

/** The SHA-256 (hex) the store keeps instead of a join token's secret. */
export const hashJoinSecret = (secret: string) => createHash("sha256").update(secret).digest("hex");

/**
 * Parses a join token as a user pasted it (surrounding white space ignored, fingerprint case and colons
 * tolerated); throws JOIN_TOKEN_INVALID saying which part is wrong, never echoing the secret.
 */
export function parseJoinToken(text: string): JoinToken {
  const fail = (what: string): never => {
    throw new AppError(
      "JOIN_TOKEN_INVALID",
      `the join token ${what}; a join token looks like kiln1.<64 hex digits>.<43 characters>, printed by \`kiln token create --role worker\``,
    );
  };
  const parts = text.trim().split(".");
  if (parts[0] !== PREFIX) {
    if (text.trim().startsWith("kiln_")) fail("is an API token (kiln_...), not a join token");
    fail(`does not start with "${PREFIX}."`);
  }
  if (parts.length !== 3) fail(`has ${parts.length} dot-separated parts instead of 3`);
  const fingerprint = parts[1]!.replaceAll(":", "").toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(fingerprint))
    fail("has no SHA-256 fingerprint (64 hex digits) as its second part");
  const secret = parts[2]!;
  if (!/^[A-Za-z0-9_-]{43}$/.test(secret))
    fail("has a damaged secret (its third part must be 43 base64url characters)");
  return { fingerprint, secret };
}

import { createHash, randomBytes } from "node:crypto";
import { and, eq, isNull, sql } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { prepared } from "./prepared.ts";
import { type TokenRow, tokens } from "./schema.ts";

/** The roles a token can have; master/auth.ts ranks them (a worker token only connects workers). */
export const ROLES = ["admin", "operator", "submitter", "viewer", "worker"] as const;
/** One of ROLES. */
export type Role = (typeof ROLES)[number];

/** Only the hash of a token is stored; the secret itself is shown once, at creation. */
export const hashToken = (secret: string) => createHash("sha256").update(secret).digest("hex");

/** Creates a token and returns its secret (prefixed `kiln_` so leaked tokens are easy to scan for). */
export async function createToken(
  store: Store,
  t: { role: Role; name: string; project?: string | null; ttlMs?: number | null },
  now = Date.now(),
): Promise<{ id: string; secret: string }> {
  const secret = `kiln_${randomBytes(24).toString("base64url")}`;
  const id = randomBytes(6).toString("hex");
  await insertTokenHash(store, { id, hash: hashToken(secret), ...t }, now);
  return { id, secret };
}

/** Stores a token whose secret already exists (the admin token file); does nothing if it is stored. */
export function insertTokenHash(
  store: Store,
  t: { id: string; hash: string; role: Role; name: string; project?: string | null; ttlMs?: number | null },
  now = Date.now(),
) {
  return store.write(async (tx) => {
    await tx
      .insert(tokens)
      .values({
        id: t.id,
        hash: t.hash,
        role: t.role,
        name: t.name,
        project: t.project ?? null,
        createdAt: now,
        expiresAt: t.ttlMs ? now + t.ttlMs : null,
      })
      .onConflictDoNothing();
  });
}

/** The live token with this secret, or undefined (unknown, revoked or expired). */
export async function findToken(db: Db, secret: string, now = Date.now()): Promise<TokenRow | undefined> {
  // Every API request looks its token up: a prepared query keeps drizzle from rebuilding the SQL each time.
  const q = prepared(db, "findToken", () =>
    db
      .select()
      .from(tokens)
      .where(and(eq(tokens.hash, sql.placeholder("hash")), isNull(tokens.revokedAt)))
      .prepare(),
  );
  const [row] = await q.all({ hash: hashToken(secret) });
  if (!row || (row.expiresAt !== null && row.expiresAt <= now)) return undefined;
  return row;
}

/** Every token, revoked and expired ones too, oldest first (hashes only: the secrets are never stored). */
export function listTokens(db: Db) {
  return db.select().from(tokens).orderBy(tokens.createdAt);
}

/** Revokes token `id` and returns its row; null when it is unknown or was already revoked. */
export function revokeToken(store: Store, id: string, now = Date.now()) {
  return store.write(async (tx) => {
    const [row] = await tx
      .update(tokens)
      .set({ revokedAt: now })
      .where(and(eq(tokens.id, id), isNull(tokens.revokedAt)))
      .returning();
    return row ?? null;
  });
}

import { randomBytes } from "node:crypto";
import { and, eq, gt, inArray, isNull, sql } from "drizzle-orm";
import { index, integer, sqliteTable, text } from "drizzle-orm/sqlite-core";
import { AppError } from "../lib/errors.ts";
import type { Db, Store } from "./open.ts";
import { prepared } from "./prepared.ts";

/*
 * Worker enrollment: join tokens (single-use, expiring; only the hash of the secret is kept) and the
 * client certificates the master's CA issued, by serial, so a connection can be checked against
 * revocation each time. The tables are declared here rather than in schema.ts because nothing else
 * touches them; drizzle.config.ts lists this file too so drizzle-kit generates their migration.
 */

/** Join tokens by the SHA-256 of their secret: each enrolls one worker, once, before expires_at. */
export const joinTokens = sqliteTable("join_tokens", {
  id: text("id").primaryKey(),
  secretHash: text("secret_hash").notNull().unique(),
  role: text("role").notNull(),
  createdAt: integer("created_at").notNull(),
  createdBy: text("created_by"),
  expiresAt: integer("expires_at").notNull(),
  usedAt: integer("used_at"),
  // The worker that redeemed it, for the audit trail and a clear "already used by W" message.
  usedBy: text("used_by"),
  revokedAt: integer("revoked_at"),
});

/** Every client certificate the master's CA issued, by serial: whose it is, how it came, whether revoked. */
export const workerCertificates = sqliteTable(
  "worker_certificates",
  {
    serial: text("serial").primaryKey(),
    worker: text("worker").notNull(),
    fingerprint: text("fingerprint").notNull(),
    notBefore: integer("not_before").notNull(),
    notAfter: integer("not_after").notNull(),
    issuedAt: integer("issued_at").notNull(),
    // How the worker came by it: the join token it redeemed, or the certificate it renewed.
    joinToken: text("join_token"),
    renewedFrom: text("renewed_from"),
    revokedAt: integer("revoked_at"),
    revokeReason: text("revoke_reason"),
  },
  (t) => [index("worker_certificates_worker").on(t.worker, t.notAfter)],
);

/** A join_tokens row as read. */
export type JoinTokenRow = typeof joinTokens.$inferSelect;
/** A worker_certificates row as read. */
export type WorkerCertificateRow = typeof workerCertificates.$inferSelect;

/** What the store records of an issued certificate. */
export interface CertificateRecord {
  serial: string;
  fingerprint: string;
  notBefore: number;
  notAfter: number;
}

/** Stores a new join token by the hash of its secret; it expires `ttlMs` from `now`. */
export async function createJoinToken(
  store: Store,
  t: { secretHash: string; ttlMs: number; createdBy?: string | null },
  now = Date.now(),
): Promise<{ id: string; expiresAt: number }> {
  const id = randomBytes(6).toString("hex");
  const expiresAt = now + t.ttlMs;
  await store.write((tx) =>
    tx.insert(joinTokens).values({
      id,
      secretHash: t.secretHash,
      role: "worker",
      createdAt: now,
      createdBy: t.createdBy ?? null,
      expiresAt,
    }),
  );
  return { id, expiresAt };
}

/** Every join token, oldest first (secrets are not stored, so none can be shown again). */
export const listJoinTokens = (db: Db) => db.select().from(joinTokens).orderBy(joinTokens.createdAt);

/**
 * Revokes a join token. An unused one enrolls nobody from then on; a used one takes with it every live
 * certificate that came from it, renewals included (the serials are returned so the master can close
 * their connections). Null when there is no such token, or it was revoked already.
 */
export function revokeJoinToken(store: Store, id: string, now = Date.now()) {
  return store.write(async (tx) => {
    const [row] = await tx
      .update(joinTokens)
      .set({ revokedAt: now })
      .where(and(eq(joinTokens.id, id), isNull(joinTokens.revokedAt)))
      .returning();
    if (!row) return null;
    // The certificates that descend from the token: the one it enrolled, then each renewal of one of them.
    const lineage: string[] = [];
    let from = await tx
      .select({ serial: workerCertificates.serial })
      .from(workerCertificates)
      .where(eq(workerCertificates.joinToken, id));
    while (from.length > 0) {
      const serials = from.map((r) => r.serial);
      lineage.push(...serials);
      from = await tx
        .select({ serial: workerCertificates.serial })
        .from(workerCertificates)
        .where(inArray(workerCertificates.renewedFrom, serials));
    }
    const revoked =
      lineage.length === 0
        ? []
        : await tx
            .update(workerCertificates)
            .set({ revokedAt: now, revokeReason: `join token ${id} revoked` })
            .where(and(inArray(workerCertificates.serial, lineage), isNull(workerCertificates.revokedAt)))
            .returning({ serial: workerCertificates.serial });
    return { ...row, certificates: revoked.map((r) => r.serial) };
  });
}

const refused = (code: string, message: string, status = 401) => new AppError(code, message, { status });

/**
 * Redeems the join token whose secret hashes to `secretHash` for `worker` and records the certificate
 * `issue` returns, all in one transaction: the token is marked used only if the certificate is recorded,
 * and of two racing redeemers exactly one wins. Throws JOIN_TOKEN_UNKNOWN, _USED, _EXPIRED, _REVOKED
 * (401) or WORKER_ALREADY_ENROLLED (409) saying why.
 */
export function redeemJoinToken<T extends CertificateRecord>(
  store: Store,
  r: { secretHash: string; worker: string; issue: () => Promise<T> },
  now = Date.now(),
): Promise<T> {
  return store.write(async (tx) => {
    const [row] = await tx.select().from(joinTokens).where(eq(joinTokens.secretHash, r.secretHash));
    if (!row)
      throw refused(
        "JOIN_TOKEN_UNKNOWN",
        "this master never issued that join token: ask its operator for one",
      );
    if (row.revokedAt !== null)
      throw refused("JOIN_TOKEN_REVOKED", `join token ${row.id} was revoked: ask for a new one`);
    if (row.usedAt !== null)
      throw refused(
        "JOIN_TOKEN_USED",
        `join token ${row.id} was already used by worker ${row.usedBy} at ${new Date(row.usedAt).toISOString()}: a join token enrolls one worker once; ask for a new one`,
      );
    if (row.expiresAt <= now)
      throw refused(
        "JOIN_TOKEN_EXPIRED",
        `join token ${row.id} expired at ${new Date(row.expiresAt).toISOString()}: ask for a new one`,
      );
    await refuseIfEnrolled(tx, r.worker, now);
    // Guarded, so a second master process sharing the store cannot redeem the same token in parallel.
    const claimed = await tx
      .update(joinTokens)
      .set({ usedAt: now, usedBy: r.worker })
      .where(and(eq(joinTokens.id, row.id), isNull(joinTokens.usedAt), isNull(joinTokens.revokedAt)))
      .returning();
    if (claimed.length === 0)
      throw refused(
        "JOIN_TOKEN_USED",
        `join token ${row.id} was used by another worker just now: ask for a new one`,
      );
    const cert = await r.issue();
    await insertCertificate(tx, cert, r.worker, now, { joinToken: row.id });
    return cert;
  });
}

async function refuseIfEnrolled(tx: Db, worker: string, now: number) {
  const [live] = await tx
    .select()
    .from(workerCertificates)
    .where(
      and(
        eq(workerCertificates.worker, worker),
        isNull(workerCertificates.revokedAt),
        gt(workerCertificates.notAfter, now),
      ),
    )
    .limit(1);
  if (live)
    throw refused(
      "WORKER_ALREADY_ENROLLED",
      `worker ${worker} is already enrolled (certificate ${live.serial}, valid until ${new Date(live.notAfter).toISOString()}): revoke it first (\`kiln workers rm ${worker}\`) or join with another --name`,
      409,
    );
}

function insertCertificate(
  tx: Db,
  cert: CertificateRecord,
  worker: string,
  now: number,
  from: { joinToken?: string; renewedFrom?: string },
) {
  return tx.insert(workerCertificates).values({
    serial: cert.serial,
    worker,
    fingerprint: cert.fingerprint,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    issuedAt: now,
    joinToken: from.joinToken ?? null,
    renewedFrom: from.renewedFrom ?? null,
  });
}

/**
 * Records the certificate `issue` returns as the renewal of `fromSerial`, which must be live and belong
 * to `worker` (checked in the same transaction, so a revocation racing the renewal wins).
 */
export function recordRenewal<T extends CertificateRecord>(
  store: Store,
  r: { fromSerial: string; worker: string; issue: () => Promise<T> },
  now = Date.now(),
): Promise<T> {
  return store.write(async (tx) => {
    const [from] = await tx
      .select()
      .from(workerCertificates)
      .where(eq(workerCertificates.serial, r.fromSerial));
    if (!from || from.worker !== r.worker || from.revokedAt !== null || from.notAfter <= now)
      throw refused(
        "CERTIFICATE_REVOKED",
        `certificate ${r.fromSerial} is not a live certificate of ${r.worker}`,
      );
    const cert = await r.issue();
    await insertCertificate(tx, cert, r.worker, now, { renewedFrom: r.fromSerial });
    return cert;
  });
}

/** The recorded certificate with this serial, or undefined when this master never issued it. */
export async function findCertificate(db: Db, serial: string): Promise<WorkerCertificateRow | undefined> {
  // Every worker request checks revocation here: prepared once, like findToken.
  const q = prepared(db, "findCertificate", () =>
    db
      .select()
      .from(workerCertificates)
      .where(eq(workerCertificates.serial, sql.placeholder("serial")))
      .prepare(),
  );
  const [row] = await q.all({ serial });
  return row;
}

/** Revokes one certificate; returns its row, or null when it is unknown or already revoked. */
export function revokeCertificate(store: Store, serial: string, reason: string, now = Date.now()) {
  return store.write(async (tx) => {
    const [row] = await tx
      .update(workerCertificates)
      .set({ revokedAt: now, revokeReason: reason })
      .where(and(eq(workerCertificates.serial, serial), isNull(workerCertificates.revokedAt)))
      .returning();
    return row ?? null;
  });
}

/** Revokes every live certificate of `worker` (what `kiln workers rm W` does); returns how many. */
export function revokeWorkerCertificates(store: Store, worker: string, reason: string, now = Date.now()) {
  return store.write(async (tx) => {
    const rows = await tx
      .update(workerCertificates)
      .set({ revokedAt: now, revokeReason: reason })
      .where(and(eq(workerCertificates.worker, worker), isNull(workerCertificates.revokedAt)))
      .returning();
    return rows.length;
  });
}

/**
 * The store side of enrollment as the TLS module expects it (src/tls/enroll.ts `CertificateLedger`):
 * tls may not import the store, so the master hands it this object.
 */
export function certificateLedger(store: Store) {
  return {
    redeem: <T extends CertificateRecord>(
      secretHash: string,
      worker: string,
      issue: () => Promise<T>,
      now?: number,
    ) => redeemJoinToken(store, { secretHash, worker, issue }, now),
    renew: <T extends CertificateRecord>(
      fromSerial: string,
      worker: string,
      issue: () => Promise<T>,
      now?: number,
    ) => recordRenewal(store, { fromSerial, worker, issue }, now),
    find: (serial: string) => findCertificate(store.db, serial),
  };
}

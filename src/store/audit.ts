import { and, asc, desc, gte, lt } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { insertPrepared } from "./prepared.ts";
import { type AuditRow, auditLog } from "./schema.ts";

/** What an audit entry records; the store adds its id. */
export type NewAuditEntry = Omit<AuditRow, "id">;

/** Appends one audit entry durably. */
export function appendAudit(store: Store, entry: NewAuditEntry) {
  return store.write(async (tx) => {
    // One per submit: prepared once, not built anew.
    await insertPrepared(store.db, tx, auditLog, "audit", entry, false);
  });
}

/**
 * Audit entries newest first: at most `limit`, with ids below `before` (the cursor of the page before),
 * recorded at or after `since`. Both walks are index range scans, so a page costs the same whatever the
 * size of the table: `since` becomes the first id recorded then (through audit_log_at), and the page
 * itself is a range of the primary key.
 */
export async function listAudit(
  db: Db,
  q: { limit: number; before?: number; since?: number },
): Promise<AuditRow[]> {
  const conds = [];
  if (q.before !== undefined) conds.push(lt(auditLog.id, q.before));
  if (q.since !== undefined) {
    const [first] = await db
      .select({ id: auditLog.id })
      .from(auditLog)
      .where(gte(auditLog.at, q.since))
      .orderBy(asc(auditLog.at))
      .limit(1);
    if (!first) return [];
    conds.push(gte(auditLog.id, first.id));
  }
  return db
    .select()
    .from(auditLog)
    .where(conds.length ? and(...conds) : undefined)
    .orderBy(desc(auditLog.id))
    .limit(q.limit);
}

import { sql } from "drizzle-orm";
import type { SQLiteTable } from "drizzle-orm/sqlite-core";
import type { Db } from "./open.ts";

const cache = new WeakMap<Db, Map<string, unknown>>();

/**
 * Builds a drizzle prepared query once per store and reuses it: drizzle otherwise rebuilds the SQL text
 * on every call, which profiling showed to be most of the master's CPU on the dispatch path.
 */
export function prepared<T>(db: Db, key: string, build: () => T): T {
  let m = cache.get(db);
  if (!m) {
    m = new Map();
    cache.set(db, m);
  }
  let q = m.get(key) as T | undefined;
  if (!q) {
    q = build();
    m.set(key, q);
  }
  return q;
}

/**
 * `q`, a query prepared once per store with prepared(), made to run inside the write transaction `tx`
 * (Store.write's), so a hot write neither rebuilds its SQL nor leaves its transaction. Writers are
 * serialised (Store.write), so one transaction at a time holds the statement; a savepoint shares its
 * transaction's. Relies on drizzle's libSQL session keeping its transaction as `tx` on the session and on
 * the prepared query (drizzle-orm/libsql/session.js); prepared.test.ts fails when that changes.
 */
export function inTransaction<Q extends object>(tx: Db, q: Q): Q {
  const session = (tx as unknown as { session?: { tx?: unknown } }).session;
  if (!session?.tx || !("tx" in q)) {
    throw new Error("inTransaction: not inside a libSQL write transaction, or drizzle changed its session");
  }
  (q as { tx: unknown }).tx = session.tx;
  return q;
}

/**
 * Inserts `values` into `table` inside the write transaction `tx` with a statement prepared once per store
 * (`db`) for each set of columns given: an undefined value leaves its column to its default, as drizzle's
 * values() does. Returns the new rows; with `returning` false (an insert nobody reads back) none. For the
 * inserts every job makes.
 */
export async function insertPrepared<R>(
  db: Db,
  tx: Db,
  table: SQLiteTable,
  name: string,
  values: Record<string, unknown>,
  returning = true,
): Promise<R[]> {
  const cols = Object.keys(values).filter((c) => values[c] !== undefined);
  const args = Object.fromEntries(cols.map((c) => [c, values[c]]));
  const q = prepared(db, `insert:${name}:${returning}:${cols.join(",")}`, () => {
    const insert = db
      .insert(table)
      .values(Object.fromEntries(cols.map((c) => [c, sql.placeholder(c)])) as never);
    return returning ? insert.returning().prepare() : insert.prepare();
  });
  if (!returning) {
    await inTransaction(tx, q).run(args);
    return [];
  }
  return (await inTransaction(tx, q).all(args)) as R[];
}

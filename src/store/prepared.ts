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

import { open } from "node:fs/promises";
import Database from "libsql";

/*
 * Per-connection set-up of the embedded libSQL driver, which @libsql/client does not offer.
 *
 * @libsql/client prepares every statement anew on every call and asks the prepared statement for its
 * columns twice per call; profiling the master under load showed preparing and column listing as the
 * largest part of its CPU. The driver's connections are opened inside the client's pool, out of reach,
 * so the one way in is the driver's own Database class, which this module extends once per process:
 *
 * - a statement cache per connection (most recently used first, bounded), the column list of each cached
 *   statement kept with it. Every statement the client runs is run to its end at once (all() or run()), so
 *   a cached statement is never in use twice. Only migrations change the schema, before any other query,
 *   and the cache is dropped after them (forgetStatements);
 * - `busy_timeout` on every connection of the pool, not only on the one that happened to run the PRAGMA;
 * - `synchronous = NORMAL` on every connection in WAL mode, set before its first transaction. A commit then
 *   writes the WAL without waiting for the disk; a crash of the process loses nothing committed (the
 *   writes are in the kernel's page cache), only a power loss or a crash of the host could. The store
 *   makes the writes that must survive that durable itself, by syncing the WAL before it resolves them
 *   (syncWal, Store.write), several commits per sync under load.
 */

const CACHE_MAX = 256;

type Stmt = Database.Statement;
interface Conn {
  statements: Map<string, Stmt>;
  /** The cacheEpoch its statements were prepared in. */
  epoch: number;
  /** Whether the connection's journal mode was checked and `synchronous` set accordingly. */
  tuned: boolean;
}

const conns = new WeakMap<object, Conn>();
let installed = false;
let cacheEpoch = 0;

/** Installs the statement cache and per-connection pragmas into the libSQL driver (once per process). */
export function installConnectionTuning() {
  if (installed) return;
  installed = true;
  const proto = Database.prototype as unknown as {
    prepare(this: object, sql: string): Stmt;
    close(this: object): unknown;
  };
  const prepare = proto.prepare;
  const close = proto.close;
  // A closed connection's statements are dropped with it, not left to pin it until collected.
  proto.close = function (this: object) {
    conns.get(this)?.statements.clear();
    conns.delete(this);
    return close.call(this);
  };
  proto.prepare = function (this: object, sql: string): Stmt {
    let c = conns.get(this);
    if (!c) {
      c = { statements: new Map(), epoch: cacheEpoch, tuned: false };
      conns.set(this, c);
      prepare.call(this, "PRAGMA busy_timeout = 5000").run();
    }
    // Before the connection's first transaction: `synchronous` cannot change inside one, and by then
    // openStore has put the file in WAL mode (a connection opened before that reads "delete" here).
    if (!c.tuned && /^BEGIN\b/i.test(sql)) {
      c.tuned = true;
      const mode = prepare.call(this, "PRAGMA journal_mode").raw(true).all() as unknown[][];
      if (String(mode[0]?.[0]).toLowerCase() === "wal")
        prepare.call(this, "PRAGMA synchronous = NORMAL").run();
    }
    if (c.epoch !== cacheEpoch) {
      c.statements.clear();
      c.epoch = cacheEpoch;
    }
    const cached = c.statements.get(sql);
    if (cached) {
      // Most recently used last, so the first key is the one to drop.
      c.statements.delete(sql);
      c.statements.set(sql, cached);
      return cached;
    }
    const stmt = prepare.call(this, sql);
    let columns: ReturnType<Stmt["columns"]> | undefined;
    const listColumns = stmt.columns.bind(stmt);
    stmt.columns = () => {
      columns ??= listColumns();
      return columns;
    };
    c.statements.set(sql, stmt);
    if (c.statements.size > CACHE_MAX) c.statements.delete(c.statements.keys().next().value!);
    return stmt;
  };
}

/** Drops every cached statement of every connection (after the schema changed: migrations). */
export function forgetStatements() {
  cacheEpoch++;
}

/**
 * Makes everything written to the WAL file `path` so far durable (fdatasync); a missing WAL means there
 * is nothing to sync (not in WAL mode, where each commit syncs itself, or no connection is open).
 */
export async function syncWal(path: string): Promise<void> {
  let fh: Awaited<ReturnType<typeof open>>;
  try {
    fh = await open(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  try {
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

import { type Client, createClient } from "@libsql/client";
import { drizzle, type LibSQLDatabase } from "drizzle-orm/libsql";
import { AppError } from "../lib/errors.ts";
import { forgetStatements, installConnectionTuning, syncWal } from "./connection.ts";
import { MIGRATIONS } from "./migrations.gen.ts";
import * as schema from "./schema.ts";

/** The drizzle database over Kiln's schema: for reads, and for writes inside Store.write. */
export type Db = LibSQLDatabase<typeof schema>;

/** How a write must be kept: `durable` (the default) survives a power loss once its promise resolves. */
export interface WriteOptions {
  /**
   * false: resolve once committed, before the disk has it. A crash of the process loses nothing
   * committed; a power loss or crash of the host may lose it, until the next durable write or sync()
   * (each makes every earlier commit durable too). Only for writes whose loss the system recovers from
   * by itself (an assignment, a start, a lease extension: the worker and the lease rules repair them).
   */
  durable?: boolean;
}

/** An open store: the database, the raw libSQL client, and the one way to write. */
export interface Store {
  db: Db;
  client: Client;
  /**
   * Runs `fn` inside a write transaction and resolves once it is committed and (unless opts.durable is
   * false) on disk. Writers are serialised in this process (so libSQL never answers SQLITE_BUSY between
   * our own connections; readers are not blocked, WAL) and grouped into shared commits under load.
   */
  write<T>(fn: (tx: Db) => Promise<T>, opts?: WriteOptions): Promise<T>;
  /** Resolves once every transaction committed so far is on disk; rejects when the disk refused. */
  sync(): Promise<void>;
  close(): void;
}

/** Turns `--db` (or the data dir default) into a libSQL URL; remote URLs pass through unchanged. */
export function storeUrl(db: string, dataDir: string): string {
  if (db === "") return `file:${dataDir}/kiln.db`;
  if (/^(libsql|https?|wss?|file):/.test(db)) return db;
  if (db.startsWith("/")) return `file:${db}`;
  throw new AppError(
    "CONFIG_INVALID",
    `--db ${db}: use a libsql://, http(s):// or file: URL, or an absolute path`,
  );
}

/**
 * Opens the store at `url`, applies the embedded migrations, and returns it ready for use. `onWrite`
 * hears the outcome of every committed or failed write transaction (null for success).
 */
export async function openStore(
  url: string,
  authToken?: string,
  onWrite: (err: unknown) => void = () => {},
): Promise<Store> {
  installConnectionTuning();
  const client = createClient({ url, authToken });
  // The WAL file to sync for durable writes; none for a remote store, whose server keeps its own promise.
  let wal: string | null = null;
  if (url.startsWith("file:")) {
    // WAL lets readers run beside the single writer, and a process crash never loses a committed
    // transaction in WAL mode whatever `synchronous` says. Every connection runs with synchronous=NORMAL
    // (connection.ts), and durable writes sync the WAL before they resolve (groupCommit), so a power
    // loss loses no write whose promise resolved. Each connection gets its busy timeout as it opens
    // (connection.ts): switching to WAL takes a lock too, and another process may still hold one for a
    // moment (a checkpoint as the last connection closes).
    const mode = await client.execute("PRAGMA journal_mode = WAL");
    // SQLite's own idea of the file, whatever form the URL took; no WAL file to sync when the file
    // system refused WAL mode (each commit then syncs itself, synchronous staying FULL).
    const main = await client.execute("PRAGMA database_list");
    const file = String(main.rows.find((r) => r[1] === "main")?.[2] ?? "");
    if (String(mode.rows[0]?.[0]).toLowerCase() === "wal" && file !== "") wal = `${file}-wal`;
  }
  const db = drizzle(client, { schema });
  await migrate(client);
  forgetStatements();
  const sync = walSyncer(wal);
  return {
    db,
    client,
    write: groupCommit(db, onWrite, sync),
    sync: () => sync.sync(),
    close() {
      client.close();
    },
  };
}

/*
 * Syncs the WAL for durable writes, several commits per sync: a sync() asked for while one is under way
 * waits for the next, which then covers every commit made meanwhile. The sync runs on a thread of the
 * runtime's pool, so the process goes on serving while the disk works.
 */
function walSyncer(wal: string | null) {
  let committed = 0;
  let synced = 0;
  let running = false;
  let waiting: { upTo: number; resolve(): void; reject(e: unknown): void }[] = [];
  const run = async () => {
    running = true;
    while (waiting.length > 0) {
      const upTo = committed;
      const now = waiting.filter((w) => w.upTo <= upTo);
      waiting = waiting.filter((w) => w.upTo > upTo);
      try {
        if (wal) await syncWal(wal);
        synced = Math.max(synced, upTo);
        for (const w of now) w.resolve();
      } catch (err) {
        for (const w of now) w.reject(err);
      }
    }
    running = false;
  };
  return {
    /** Counts a commit: the next sync must cover it. */
    committed() {
      committed++;
    },
    sync(): Promise<void> {
      if (synced >= committed) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        waiting.push({ upTo: committed, resolve, reject });
        if (!running) void run();
      });
    },
  };
}

interface Pending {
  fn: (tx: Db) => Promise<unknown>;
  durable: boolean;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/*
 * Group commit: writers are served one transaction at a time, and every writer that queued up while a
 * transaction was committing joins the next one, each in its own savepoint (so one failing writer rolls
 * back only its own changes). Under load this turns N commits (N fsyncs) into a few; idle, a write is
 * still one transaction on its own. A writer's promise resolves only after the commit that holds it, and a
 * durable writer's only after the WAL sync that follows that commit.
 */
function groupCommit(db: Db, onWrite: (err: unknown) => void, wal: ReturnType<typeof walSyncer>) {
  let queue: Pending[] = [];
  let running = false;
  const drain = async () => {
    running = true;
    while (queue.length > 0) {
      const batch = queue;
      queue = [];
      const results: { ok: boolean; value: unknown }[] = [];
      try {
        await db.transaction(async (tx) => {
          if (batch.length === 1) {
            results.push({ ok: true, value: await batch[0]!.fn(tx as unknown as Db) });
            return;
          }
          for (const p of batch) {
            try {
              results.push({ ok: true, value: await tx.transaction((sp) => p.fn(sp as unknown as Db)) });
            } catch (err) {
              results.push({ ok: false, value: err });
            }
          }
        });
      } catch (err) {
        // The commit itself failed: nobody in this batch was written.
        onWrite(err);
        for (const p of batch) p.reject(err);
        continue;
      }
      wal.committed();
      const failed = results.find((r) => !r.ok);
      // One sync for the batch, started only when a durable writer in it waits for one.
      let synced: Promise<void> | null = null;
      const durable = () => {
        synced ??= wal.sync().then(
          () => onWrite(failed ? failed.value : null),
          (err) => {
            onWrite(err);
            throw err;
          },
        );
        return synced;
      };
      batch.forEach((p, i) => {
        const r = results[i]!;
        if (!r.ok) p.reject(r.value);
        else if (!p.durable) p.resolve(r.value);
        else
          durable().then(
            () => p.resolve(r.value),
            (err) => p.reject(err),
          );
      });
      if (!synced) onWrite(failed ? failed.value : null);
    }
    running = false;
  };
  return <T>(fn: (tx: Db) => Promise<T>, opts: WriteOptions = {}): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      queue.push({ fn, durable: opts.durable !== false, resolve: resolve as (v: unknown) => void, reject });
      if (!running) void drain();
    });
}

/*
 * drizzle's own migrator reads a folder from disk, which does not exist inside the compiled binary. This
 * one applies the embedded copies and keeps drizzle's `__drizzle_migrations` bookkeeping (hash and
 * created_at = the journal's `when`), so drizzle-kit and Kiln agree on what has been applied.
 */
async function migrate(client: Client) {
  await client.execute(
    "CREATE TABLE IF NOT EXISTS __drizzle_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, hash text NOT NULL, created_at numeric)",
  );
  const last = await client.execute(
    "SELECT created_at FROM __drizzle_migrations ORDER BY created_at DESC LIMIT 1",
  );
  const lastWhen = last.rows.length ? Number(last.rows[0]![0]) : 0;
  for (const m of MIGRATIONS) {
    if (m.when <= lastWhen) continue;
    const statements = m.sql
      .split("--> statement-breakpoint")
      .map((s) => s.trim())
      .filter(Boolean);
    await client.batch(
      [
        ...statements,
        { sql: "INSERT INTO __drizzle_migrations (hash, created_at) VALUES (?, ?)", args: [m.hash, m.when] },
      ],
      "write",
    );
  }
}

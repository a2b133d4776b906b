import { type Client, createClient } from "@libsql/client";
import { drizzle, type LibSQLDatabase } from "drizzle-orm/libsql";
import { AppError } from "../lib/errors.ts";
import { MIGRATIONS } from "./migrations.gen.ts";
import * as schema from "./schema.ts";

/** The drizzle database over Kiln's schema: for reads, and for writes inside Store.write. */
export type Db = LibSQLDatabase<typeof schema>;

/** An open store: the database, the raw libSQL client, and the one way to write. */
export interface Store {
  db: Db;
  client: Client;
  /**
   * Runs `fn` inside a write transaction and resolves once it is committed. Writers are serialised in
   * this process (so libSQL never answers SQLITE_BUSY between our own connections; readers are not
   * blocked, WAL) and grouped into shared commits under load.
   */
  write<T>(fn: (tx: Db) => Promise<T>): Promise<T>;
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
  const client = createClient({ url, authToken });
  if (url.startsWith("file:")) {
    // WAL lets readers run beside the single writer; a process crash never loses a committed
    // transaction in WAL mode, whatever `synchronous` says, and FULL also survives power loss.
    // The busy timeout first: switching to WAL takes a lock too, and another process may still hold one
    // for a moment (a checkpoint as the last connection closes).
    await client.execute("PRAGMA busy_timeout = 5000");
    await client.execute("PRAGMA journal_mode = WAL");
  }
  const db = drizzle(client, { schema });
  await migrate(client);
  return {
    db,
    client,
    write: groupCommit(db, onWrite),
    close() {
      client.close();
    },
  };
}

interface Pending {
  fn: (tx: Db) => Promise<unknown>;
  resolve(v: unknown): void;
  reject(e: unknown): void;
}

/*
 * Group commit: writers are served one transaction at a time, and every writer that queued up while a
 * transaction was committing joins the next one, each in its own savepoint (so one failing writer rolls
 * back only its own changes). Under load this turns N commits (N fsyncs) into a few; idle, a write is
 * still one transaction on its own. A writer's promise resolves only after the commit that holds it.
 */
function groupCommit(db: Db, onWrite: (err: unknown) => void) {
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
      const failed = results.find((r) => !r.ok);
      onWrite(failed ? failed.value : null);
      batch.forEach((p, i) => {
        const r = results[i]!;
        if (r.ok) p.resolve(r.value);
        else p.reject(r.value);
      });
    }
    running = false;
  };
  return <T>(fn: (tx: Db) => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
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

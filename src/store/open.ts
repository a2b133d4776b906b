import { type Client, createClient } from "@libsql/client";
import { drizzle, type LibSQLDatabase } from "drizzle-orm/libsql";
import { AppError } from "../lib/errors.ts";
import { MIGRATIONS } from "./migrations.gen.ts";
import * as schema from "./schema.ts";

export type Db = LibSQLDatabase<typeof schema>;

export interface Store {
  db: Db;
  client: Client;
  /**
   * Runs `fn` as one write transaction, one at a time in this process. Serialising writers here means
   * libSQL never answers SQLITE_BUSY between our own connections; readers are not blocked (WAL).
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

/** Opens the store at `url`, applies the embedded migrations, and returns it ready for use. */
export async function openStore(url: string, authToken?: string): Promise<Store> {
  const client = createClient({ url, authToken });
  if (url.startsWith("file:")) {
    // WAL lets readers run beside the single writer; a process crash never loses a committed
    // transaction in WAL mode, whatever `synchronous` says, and FULL also survives power loss.
    await client.execute("PRAGMA journal_mode = WAL");
    await client.execute("PRAGMA busy_timeout = 5000");
  }
  const db = drizzle(client, { schema });
  await migrate(client);
  let chain: Promise<unknown> = Promise.resolve();
  return {
    db,
    client,
    write<T>(fn: (tx: Db) => Promise<T>): Promise<T> {
      const run = chain.then(() => db.transaction((tx) => fn(tx as unknown as Db)));
      chain = run.catch(() => {});
      return run;
    },
    close() {
      client.close();
    },
  };
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

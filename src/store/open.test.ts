import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import { syncWal } from "./connection.ts";
import { openStore, type Store } from "./open.ts";
import { tokens } from "./schema.ts";

let dir: string;
let store: Store;
const outcomes: unknown[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-open-"));
  outcomes.length = 0;
  store = await openStore(`file:${join(dir, "kiln.db")}`, undefined, (err) => outcomes.push(err));
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const token = (id: string) => ({
  id,
  hash: `hash-${id}`,
  role: "viewer",
  name: id,
  project: null,
  createdAt: 1,
  expiresAt: null,
  revokedAt: null,
});

test("every connection of the pool commits with synchronous NORMAL in WAL mode and waits on a busy file", async () => {
  // Held open inside a write, so the reads beside it take another connection of the pool.
  let inside: unknown[][] = [];
  let beside: unknown[] = [];
  await store.write(async (tx) => {
    inside = [await tx.all(sql`PRAGMA synchronous`), await tx.all(sql`PRAGMA busy_timeout`)];
    beside = (
      await Promise.all(["PRAGMA journal_mode", "PRAGMA busy_timeout"].map((q) => store.client.execute(q)))
    ).map((r) => r.rows[0]![0]);
  });
  expect(inside.map((rows) => Object.values(rows[0] as object)[0])).toEqual([1, 5000]);
  expect(beside).toEqual(["wal", 5000]);
});

test("durable and relaxed writes both commit, and sync resolves once everything committed is on disk", async () => {
  const relaxed = store.write((tx) => tx.insert(tokens).values(token("a")), { durable: false });
  const durable = store.write((tx) => tx.insert(tokens).values(token("b")));
  await Promise.all([relaxed, durable]);
  await store.write((tx) => tx.insert(tokens).values(token("c")), { durable: false });
  await store.sync();
  // Nothing is left to sync: a second call has nothing to wait for.
  await store.sync();
  const rows = await store.db.select({ id: tokens.id }).from(tokens);
  expect(rows.map((r) => r.id).sort()).toEqual(["a", "b", "c"]);
  expect(outcomes.every((o) => o === null)).toBe(true);
});

test("a writer that fails rolls back alone, also when it shares a commit with durable writers", async () => {
  const ok = store.write((tx) => tx.insert(tokens).values(token("x")));
  const bad = store.write(async (tx) => {
    await tx.insert(tokens).values(token("y"));
    throw new Error("no");
  });
  const dup = store.write((tx) => tx.insert(tokens).values(token("x")), { durable: false });
  const [okDone, badDone, dupDone] = await Promise.allSettled([ok, bad, dup]);
  expect(okDone.status).toBe("fulfilled");
  expect(badDone.status === "rejected" && String(badDone.reason)).toContain("no");
  expect(dupDone.status).toBe("rejected");
  const rows = await store.db.select({ id: tokens.id }).from(tokens);
  expect(rows.map((r) => r.id)).toEqual(["x"]);
});

test("cached statements keep their answers past the cache's size and across a change of the schema", async () => {
  await store.write((tx) => tx.insert(tokens).values(token("k")));
  // More distinct statements than a connection keeps: the first ones are prepared again when they come back.
  for (let i = 0; i < 300; i++) {
    const r = await store.client.execute(`SELECT ${i} AS n, count(*) AS c FROM tokens`);
    expect([Number(r.rows[0]![0]), Number(r.rows[0]![1])]).toEqual([i, 1]);
  }
  const again = await store.client.execute("SELECT 0 AS n, count(*) AS c FROM tokens");
  expect(again.columns).toEqual(["n", "c"]);
  // A store opened anew runs its migrations, after which no statement prepared before is used.
  store.close();
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  const rows = await store.db.select({ id: tokens.id }).from(tokens);
  expect(rows.map((r) => r.id)).toEqual(["k"]);
});

test("syncing a WAL file that is not there has nothing to do", async () => {
  await syncWal(join(dir, "absent.db-wal"));
  await syncWal(join(dir, "kiln.db-wal"));
});

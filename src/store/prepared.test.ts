import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eq, sql } from "drizzle-orm";
import { assignJob, getJob, insertJob, type NewJob } from "./jobs.ts";
import { openStore, type Store } from "./open.ts";
import { inTransaction, prepared } from "./prepared.ts";
import { jobEvents, jobs, tokens } from "./schema.ts";
import { testJob } from "./test-job.ts";

let dir: string;
let store: Store;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-prepared-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const job: NewJob = testJob({
  retries: 1,
});

const renameToken = () =>
  prepared(store.db, "test:renameToken", () =>
    store.db
      .update(tokens)
      .set({ name: sql`${sql.placeholder("name")}` })
      .where(eq(tokens.id, sql.placeholder("id")))
      .prepare(),
  );

test("a statement prepared once runs inside the transaction it is given: it rolls back with it", async () => {
  await store.write((tx) =>
    tx.insert(tokens).values({ id: "t", hash: "h", role: "viewer", name: "before", createdAt: 1 }),
  );
  const failed = store.write(async (tx) => {
    await inTransaction(tx, renameToken()).run({ id: "t", name: "inside" });
    // Seen inside its own transaction...
    const [row] = await tx.select().from(tokens).where(eq(tokens.id, "t"));
    expect(row?.name).toBe("inside");
    throw new Error("roll back");
  });
  await expect(failed).rejects.toThrow("roll back");
  // ...and gone with it: it never ran on a connection of its own.
  const [row] = await store.db.select().from(tokens).where(eq(tokens.id, "t"));
  expect(row?.name).toBe("before");
  await store.write((tx) => inTransaction(tx, renameToken()).run({ id: "t", name: "after" }));
  const [again] = await store.db.select().from(tokens).where(eq(tokens.id, "t"));
  expect(again?.name).toBe("after");
});

test("outside a write transaction a prepared statement is refused, not run on its own", () => {
  expect(() => inTransaction(store.db, renameToken())).toThrow("not inside a libSQL write transaction");
});

test("prepared job changes keep their values apart across many concurrent writers and write one event each", async () => {
  const ids: number[] = [];
  for (let i = 0; i < 40; i++) ids.push((await insertJob(store, { ...job, env: { N: String(i) } })).id);
  // Concurrent writers share commits (each in its own savepoint) and the same prepared statements.
  const rows = await Promise.all(
    ids.map((id, i) =>
      assignJob(store, id, `w${i % 3}`, `s${i}`, 1000, 5000 + i, `cred-${i}`, i % 2 ? `t${i}` : null),
    ),
  );
  for (const [i, id] of ids.entries()) {
    expect(rows[i]?.id).toBe(id);
    const row = await getJob(store.db, id);
    expect(row).toMatchObject({
      state: "assigned",
      worker: `w${i % 3}`,
      slot: `s${i}`,
      assignedAt: 5000 + i,
    });
    expect(row?.credentialHash).toBe(`cred-${i}`);
    expect(row?.templateHash).toBe(i % 2 ? `t${i}` : null);
    // JSON columns go through their encoders as placeholders too, and a column the insert did not name
    // has its default.
    expect(row?.env).toEqual({ N: String(i) });
    expect(row?.useRepos).toEqual([]);
    expect(row?.cancelRequested).toBe(false);
  }
  // An assignment of a job that is no longer queued changes nothing.
  expect(await assignJob(store, ids[0]!, "w9", "s9", 1000)).toBeNull();
  const events = await store.db.select().from(jobEvents);
  expect(events.filter((e) => e.state === "assigned").length).toBe(ids.length);
  const [one] = await store.db.select().from(jobs).where(eq(jobs.id, ids[0]!));
  expect(one?.worker).toBe("w0");
});

import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getTableColumns } from "drizzle-orm";
import type { Outcome } from "../protocol/job.ts";
import {
  assignJob,
  cancelJob,
  countByState,
  DEFINITION,
  definitionOf,
  expiredLeases,
  extendLeases,
  finishJob,
  getJob,
  insertJob,
  type JobDefinition,
  jobHistory,
  markRunning,
  type NewJob,
  RUN_STATE,
  readyJobs,
  requeueOrLose,
} from "./jobs.ts";
import { MIGRATIONS } from "./migrations.gen.ts";
import { openStore, type Store } from "./open.ts";
import { jobs } from "./schema.ts";
import { testJob } from "./test-job.ts";

let dir: string;
let store: Store;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-store-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const job = (over: Partial<NewJob> = {}): NewJob => testJob({ retries: 1, ...over });

const ok: Outcome = {
  state: "succeeded",
  reason: null,
  exitCode: 0,
  message: null,
  peakMemoryBytes: null,
  cpuMs: null,
};

test("the store file is in WAL mode and migrations are recorded once", async () => {
  const mode = await store.client.execute("PRAGMA journal_mode");
  expect(String(mode.rows[0]![0])).toBe("wal");
  store.close();
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  const rows = await store.client.execute("SELECT count(*) FROM __drizzle_migrations");
  expect(Number(rows.rows[0]![0])).toBeGreaterThanOrEqual(1);
  const again = await store.client.execute("SELECT count(*) FROM __drizzle_migrations");
  expect(again.rows[0]![0]).toBe(rows.rows[0]![0]);
});

test("ready jobs come in priority order, then FIFO, limited to what was asked", async () => {
  const ids: [number, number][] = [];
  for (const p of [0, 3, 1, 3, 0]) ids.push([(await insertJob(store, job({ priority: p }))).id, p]);
  const slot = { channel: "default", arch: "amd64", resources: [] };
  const all = await readyJobs(store.db, slot, 10);
  expect(all.map((r) => r.priority)).toEqual([3, 3, 1, 0, 0]);
  expect(all[0]!.id).toBeLessThan(all[1]!.id);
  expect((await readyJobs(store.db, slot, 2)).map((r) => r.id)).toEqual(all.slice(0, 2).map((r) => r.id));
});

test("ready jobs are only those a slot of that channel, arch and resources can run", async () => {
  const any = await insertJob(store, job({ priority: 1 }));
  const own = await insertJob(store, job({ arch: "amd64" }));
  await insertJob(store, job({ arch: "arm64", priority: 9 }));
  await insertJob(store, job({ channel: "release", priority: 9 }));
  const gpu = await insertJob(store, job({ needs: ["gpu"], priority: 2 }));
  await insertJob(store, job({ needs: ["gpu", "kvm"], priority: 9 }));
  const ids = async (resources: string[]) =>
    (await readyJobs(store.db, { channel: "default", arch: "amd64", resources }, 10)).map((r) => r.id);
  expect(await ids([])).toEqual([any.id, own.id]);
  expect(await ids(["gpu"])).toEqual([gpu.id, any.id, own.id]);
  // A job that is no longer queued is not ready, whatever it matches.
  await assignJob(store, any.id, "w", "s", 1000);
  expect(await ids([])).toEqual([own.id]);
});

test("a job goes queued, assigned, running, succeeded, and records each step", async () => {
  const row = await insertJob(store, job());
  expect(await assignJob(store, row.id, "w", "slot-0", 1000)).not.toBeNull();
  expect(await assignJob(store, row.id, "w2", "slot-0", 1000)).toBeNull();
  expect(await markRunning(store, row.id, 1, "other", 1000)).toBeNull();
  expect(await markRunning(store, row.id, 1, "w", 1000)).not.toBeNull();
  expect((await finishJob(store, row.id, 1, ok, 0))!.state).toBe("succeeded");
  const history = await jobHistory(store.db, row.id);
  expect(history.map((e) => e.state)).toEqual(["queued", "assigned", "running", "succeeded"]);
});

test("a job records exactly one terminal state whatever reports race", async () => {
  const row = await insertJob(store, job({ retries: 0 }));
  await assignJob(store, row.id, "w", "s", 1000);
  await markRunning(store, row.id, 1, "w", 1000);
  const running = (await getJob(store.db, row.id))!;
  const results = await Promise.all([
    finishJob(store, row.id, 1, ok, 0),
    requeueOrLose(store, running, "gone", 0),
    finishJob(store, row.id, 1, { ...ok, state: "failed", reason: "exit", exitCode: 1 }, 0),
    cancelJob(store, row.id),
  ]);
  const terminalWrites = results.slice(0, 3).filter((r) => r !== null);
  expect(terminalWrites.length).toBe(1);
  const history = await jobHistory(store.db, row.id);
  expect(
    history.filter((e) => ["succeeded", "failed", "cancelled", "timed_out"].includes(e.state)).length,
  ).toBe(1);
});

test("a lost attempt is re-queued while retries remain, then fails as lost", async () => {
  const row = await insertJob(store, job({ retries: 1 }));
  await assignJob(store, row.id, "w", "s", 1000);
  const first = await requeueOrLose(store, (await getJob(store.db, row.id))!, "gone", 42);
  expect(first).toMatchObject({ state: "queued", attempt: 2, worker: null, logBase: 42 });
  // A late report about attempt 1 changes nothing.
  expect(await finishJob(store, row.id, 1, ok, 0)).toBeNull();
  await assignJob(store, row.id, "w", "s", 1000);
  const second = await requeueOrLose(store, (await getJob(store.db, row.id))!, "gone again", 50);
  expect(second).toMatchObject({ state: "failed", reason: "lost", attempt: 2 });
});

test("cancel ends a queued job at once and flags an active one", async () => {
  const a = await insertJob(store, job());
  expect((await cancelJob(store, a.id))!.state).toBe("cancelled");
  expect(await cancelJob(store, a.id)).toBeNull();
  const b = await insertJob(store, job());
  await assignJob(store, b.id, "w", "s", 1000);
  const flagged = await cancelJob(store, b.id);
  expect(flagged).toMatchObject({ state: "assigned", cancelRequested: true });
  // A flagged job whose worker vanishes ends cancelled, not re-queued.
  expect((await requeueOrLose(store, flagged!, "gone", 0))!.state).toBe("cancelled");
});

test("leases expire unless extended by the worker that holds the job", async () => {
  const row = await insertJob(store, job());
  await assignJob(store, row.id, "w", "s", 1000, 0);
  expect((await expiredLeases(store.db, 2000)).map((r) => r.id)).toEqual([row.id]);
  await extendLeases(store, "someone-else", [row.id], 10_000, 1500);
  expect((await expiredLeases(store.db, 2000)).length).toBe(1);
  await extendLeases(store, "w", [row.id], 10_000, 1500);
  expect((await expiredLeases(store.db, 2000)).length).toBe(0);
});

test("every column of jobs is either part of a job's definition or of its run, never both", () => {
  const columns = Object.keys(getTableColumns(jobs)).sort();
  const listed: string[] = [...DEFINITION, ...RUN_STATE].sort();
  expect(listed).toEqual(columns);
  expect(new Set(listed).size).toBe(listed.length);
});

test("a copied definition keeps every field, so a retry repeats the job exactly", async () => {
  // One value per definition column, each unlike what a plain submit stores: a column added to
  // DEFINITION without a value here fails the first check.
  const unlike: JobDefinition = {
    name: "n",
    project: "p",
    channel: "c",
    arch: "arm64",
    priority: 7,
    command: ["make", "-j2"],
    env: { A: "1" },
    secrets: { TOKEN: "s3cret" },
    timeoutMs: 1234,
    memoryBytes: 64 << 20,
    cpus: 1.5,
    pids: 99,
    scratchBytes: 2 << 20,
    root: "bookworm",
    writableRoot: true,
    setup: "apt-get install -y foo",
    needs: ["kvm"],
    egress: ["deb.debian.org"],
    repo: "main",
    repoForce: true,
    useRepos: ["bookworm-updates", "tools"],
    retries: 5,
    recipe: "deb",
    recipeVersion: 3,
    recipeVars: { url: "x" },
  };
  const plain = await insertJob(store, job());
  for (const k of DEFINITION) expect([k, unlike[k]]).not.toEqual([k, plain[k]]);
  const original = await insertJob(store, { ...job(), ...unlike });
  const copy = await insertJob(store, { ...definitionOf(original), retryOf: original.id });
  expect(definitionOf(copy)).toEqual(unlike);
  expect(copy.retryOf).toBe(original.id);
});

/* What /metrics reports must be what a count over the table says, after every kind of write. */
async function countedByTable(): Promise<Record<string, number>> {
  const rows = await store.client.execute("SELECT state, count(*) FROM jobs GROUP BY state");
  return Object.fromEntries(rows.rows.map((r) => [String(r[0]), Number(r[1])]));
}
const nonZero = (counts: Record<string, number>) =>
  Object.fromEntries(Object.entries(counts).filter(([, n]) => n));

test("the per-state counts follow every insert, transition, race and delete, in the same transaction", async () => {
  const ids: number[] = [];
  for (let i = 0; i < 6; i++) ids.push((await insertJob(store, job({ retries: 0 }))).id);
  await assignJob(store, ids[0]!, "w", "s", 1000);
  await markRunning(store, ids[0]!, 1, "w", 1000);
  await finishJob(store, ids[0]!, 1, ok, 0);
  await assignJob(store, ids[1]!, "w", "s", 1000);
  await requeueOrLose(store, (await getJob(store.db, ids[1]!))!, "gone", 0); // failed: lost
  await cancelJob(store, ids[2]!);
  await assignJob(store, ids[3]!, "w", "s", 1000);
  await markRunning(store, ids[3]!, 1, "w", 1000);
  // Racing reports: one terminal state wins, and is counted once.
  await Promise.all([finishJob(store, ids[3]!, 1, ok, 0), cancelJob(store, ids[3]!)]);
  await assignJob(store, ids[4]!, "w", "s", 1000);
  expect(await countByState(store.db)).toEqual(
    expect.objectContaining({ queued: 1, assigned: 1, succeeded: 2, failed: 1, cancelled: 1 }),
  );
  expect(nonZero(await countByState(store.db))).toEqual(await countedByTable());
  // A write that fails (a state the table's transaction rolls back) leaves the counts as they were.
  await expect(
    store.client.batch(
      ["UPDATE jobs SET state = 'running' WHERE id = 5", "SELECT * FROM no_such_table"],
      "write",
    ),
  ).rejects.toThrow();
  await store.client.execute("DELETE FROM jobs WHERE id = 1");
  expect(nonZero(await countByState(store.db))).toEqual(await countedByTable());
});

test("a store from before the counts gets them from the jobs it holds when it is opened", async () => {
  for (let i = 0; i < 3; i++) await insertJob(store, job());
  await cancelJob(store, 1);
  // Back to how a store written by an earlier version looks: no counts, no triggers, migration 0013 not
  // recorded; then more jobs written by that version.
  await store.client.batch(
    [
      "DROP TRIGGER job_counts_insert",
      "DROP TRIGGER job_counts_update",
      "DROP TRIGGER job_counts_delete",
      "DROP TABLE job_counts",
      `DELETE FROM __drizzle_migrations WHERE hash = '${MIGRATIONS.find((m) => m.tag.startsWith("0013_"))!.hash}'`,
    ],
    "write",
  );
  await store.client.execute("UPDATE jobs SET state = 'running' WHERE id = 2");
  store.close();
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  expect(nonZero(await countByState(store.db))).toEqual({ queued: 1, running: 1, cancelled: 1 });
  await insertJob(store, job());
  expect(nonZero(await countByState(store.db))).toEqual(await countedByTable());
});

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ServerWebSocket } from "bun";
import { createConsola } from "consola";
import { waitFor } from "../../test/harness.ts";
import { seedQueuedJobs } from "../../test/seed.ts";
import { loadConfig } from "../config/load.ts";
import type { MasterMessage } from "../protocol/wire.ts";
import { cancelJob, getJob, insertJob, markRunning, type NewJob } from "../store/jobs.ts";
import { openStore, type Store } from "../store/open.ts";
import { testJob } from "../store/test-job.ts";
import type { MasterContext } from "./context.ts";
import { createDispatcher, dispatchOnce } from "./dispatcher.ts";
import { reapLeasesOnce } from "./leases.ts";
import type { LiveWorker } from "./registry.ts";
import { testContext } from "./test-context.ts";

/*
 * The dispatcher and the lease reaper against a real store. Workers are registry entries whose `send`
 * keeps what the master said to them: what a worker at the other end of the socket would receive.
 */

let dir: string;
let store: Store;
let ctx: MasterContext;
/** How often ctx.dispatch() was asked for. */
let asked = 0;

const LEASE = 30_000;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-t-dispatch-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  asked = 0;
  ctx = {
    ...testContext(dir, store),
    cfg: loadConfig({ env: { KILN_MASTER_LEASE: `${LEASE / 1000}s` } }),
    dispatch: () => {
      asked++;
    },
  };
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const job = (over: Partial<NewJob> = {}): NewJob => testJob({ retries: 1, ...over });

/** A connected worker in the registry; `got` is every message the master sent it. */
function worker(
  name: string,
  over: Partial<LiveWorker> = {},
  slots: { name: string; resources?: string[]; held?: string | null }[] = [{ name: "slot-0" }],
): LiveWorker & { got: MasterMessage[] } {
  const got: MasterMessage[] = [];
  const w = {
    name,
    arch: "amd64",
    channels: ["default"],
    slots: new Map(
      slots.map((s) => [
        s.name,
        { name: s.name, resources: s.resources ?? [], held: s.held ?? null, job: null },
      ]),
    ),
    draining: false,
    holdReason: null,
    templates: [],
    send: (m: MasterMessage) => got.push(m),
    ws: {} as ServerWebSocket<unknown>,
    instance: null,
    credential: "token:test",
    ...over,
    got,
  };
  ctx.registry.add(w);
  return w;
}

const assigns = (w: { got: MasterMessage[] }) =>
  w.got.flatMap((m) => (m.type === "job.assign" ? [[m.job.id, m.slot] as const] : []));

describe("dispatchOnce", () => {
  test("hands jobs to free slots by priority, first come first served within a priority", async () => {
    const low = await insertJob(store, job({ priority: 0 }));
    const high = await insertJob(store, job({ priority: 5 }));
    const low2 = await insertJob(store, job({ priority: 0 }));
    const w = worker("w", {}, [{ name: "slot-0" }, { name: "slot-1" }]);
    expect(await dispatchOnce(ctx)).toBe(2);
    expect(assigns(w).map(([id]) => id)).toEqual([high.id, low.id]);
    expect((await getJob(store.db, low2.id))!.state).toBe("queued");
    const row = (await getJob(store.db, high.id))!;
    expect([row.state, row.worker, row.slot]).toEqual(["assigned", "w", "slot-0"]);
    expect(w.slots.get("slot-0")!.job).toBe(`${high.id}:1`);
    // Nothing is free any more: a second pass assigns nothing and sends nothing.
    expect(await dispatchOnce(ctx)).toBe(0);
    expect(assigns(w)).toHaveLength(2);
  });

  test("a job goes only to a slot whose channel, architecture and resources fit", async () => {
    const release = await insertJob(store, job({ channel: "release" }));
    const arm = await insertJob(store, job({ arch: "arm64" }));
    const gpu = await insertJob(store, job({ needs: ["gpu"] }));
    const plain = worker("plain", {}, [{ name: "s0" }, { name: "s1" }, { name: "s2" }]);
    expect(await dispatchOnce(ctx)).toBe(0);
    expect(plain.got).toEqual([]);
    const special = worker("special", { arch: "arm64", channels: ["default", "release"] }, [
      { name: "a" },
      { name: "b", resources: ["gpu"] },
    ]);
    expect(await dispatchOnce(ctx)).toBe(2);
    // Each job, oldest first, takes the first free slot that fits: the release job slot a, the arm64 job
    // (no needs) the gpu slot, so the gpu job waits for it. The default amd64 slots of plain fit none.
    expect(assigns(special).sort()).toEqual([
      [release.id, "a"],
      [arm.id, "b"],
    ]);
    expect((await getJob(store.db, gpu.id))!.state).toBe("queued");
    expect(plain.got).toEqual([]);
  });

  test("draining, held and stopping workers, held slots and busy slots are offered nothing", async () => {
    await insertJob(store, job());
    const ws = [
      worker("draining", { draining: true }),
      worker("held", { holdReason: "disk check" }),
      worker("stopping", { stopping: true }),
      worker("heldslot", {}, [{ name: "slot-0", held: "broken fan" }]),
    ];
    const busy = worker("busy");
    busy.slots.get("slot-0")!.job = "999:1";
    expect(await dispatchOnce(ctx)).toBe(0);
    for (const w of [...ws, busy]) expect(w.got).toEqual([]);
  });

  test("a rebuild passes over its original's worker while another could run it, and blocks no job behind it", async () => {
    const rebuild = await insertJob(store, job({ avoidWorker: "a" }));
    const behind = await insertJob(store, job());
    const a = worker("a");
    const b = worker("b", {}, [{ name: "slot-0" }]);
    b.slots.get("slot-0")!.job = "999:1";
    // b could run the rebuild but is busy: the rebuild waits for it, and the job behind takes a's slot.
    expect(await dispatchOnce(ctx)).toBe(1);
    expect(assigns(a)).toEqual([[behind.id, "slot-0"]]);
    b.slots.get("slot-0")!.job = null;
    expect(await dispatchOnce(ctx)).toBe(1);
    expect(assigns(b)).toEqual([[rebuild.id, "slot-0"]]);
    // With no other worker that could run it, a rebuild runs on its original's worker after all.
    const alone = await insertJob(store, job({ avoidWorker: "a", channel: "only-a" }));
    a.channels.push("only-a");
    a.slots.get("slot-0")!.job = null;
    expect(await dispatchOnce(ctx)).toBe(1);
    expect(assigns(a).at(-1)).toEqual([alone.id, "slot-0"]);
  });

  test("a cancelled job is never handed out", async () => {
    const a = await insertJob(store, job());
    const b = await insertJob(store, job());
    await cancelJob(store, a.id);
    const w = worker("w");
    await dispatchOnce(ctx);
    expect(assigns(w)).toEqual([[b.id, "slot-0"]]);
  });

  test("thousands of jobs no free slot can serve do not keep a servable one from a slot", async () => {
    await seedQueuedJobs(dir, 20_000, { channel: "nobody-serves-this", priority: 9 });
    const servable = await insertJob(store, job());
    const w = worker("w");
    expect(await dispatchOnce(ctx)).toBe(1);
    expect(assigns(w)).toEqual([[servable.id, "slot-0"]]);
  });

  test("a slot paused after a refusal is offered nothing until the pause ends, then a pass is asked for", async () => {
    const queued = await insertJob(store, job());
    const w = worker("w");
    w.slots.get("slot-0")!.refusedUntil = Date.now() + 200;
    expect(await dispatchOnce(ctx)).toBe(0);
    expect(asked).toBe(0);
    // The wake-up is a timer the dispatcher set for the pause's end: no other event is needed.
    await waitFor("the dispatcher to ask for a pass when the pause ends", () => asked === 1, 5_000);
    expect(await dispatchOnce(ctx)).toBe(1);
    expect(assigns(w)).toEqual([[queued.id, "slot-0"]]);
  });

  test("a send that throws leaves the job assigned for the lease rules to re-queue", async () => {
    const queued = await insertJob(store, job());
    worker("gone", {
      send: () => {
        throw new Error("socket closed");
      },
    });
    expect(await dispatchOnce(ctx)).toBe(1);
    expect((await getJob(store.db, queued.id))!.state).toBe("assigned");
  });
});

describe("createDispatcher", () => {
  test("calls coalesce: passes never overlap, and one asked for during a pass runs after it", async () => {
    let passes = 0;
    const d = createDispatcher(() => {
      passes++;
      return ctx;
    });
    for (let i = 0; i < 50; i++) d.dispatch();
    await d.settled();
    // The first call starts a pass; the 49 during it ask for exactly one more.
    expect(passes).toBe(2);
    await insertJob(store, job());
    const w = worker("w");
    d.dispatch();
    await d.settled();
    expect(assigns(w)).toHaveLength(1);
  });

  test("a pass that fails is logged and the dispatcher goes on", async () => {
    const errors: string[] = [];
    const log = createConsola({ level: 0, reporters: [{ log: (o) => errors.push(String(o.args[0])) }] });
    const closed = await openStore(`file:${join(dir, "closed.db")}`);
    closed.close();
    const d = createDispatcher(() => ({ ...ctx, store: closed, log }));
    worker("w");
    d.dispatch();
    await d.settled();
    expect(errors.join("\n")).toContain("dispatch: ");
    d.dispatch();
    await d.settled();
    expect(errors).toHaveLength(2);
  });
});

describe("reapLeasesOnce", () => {
  async function running(retries: number, worker = "w") {
    const row = await insertJob(store, job({ retries }));
    const { assignJob } = await import("../store/jobs.ts");
    await assignJob(store, row.id, worker, "slot-0", LEASE);
    return (await markRunning(store, row.id, 1, worker, LEASE))!;
  }

  test("a job whose worker went silent past its lease is re-queued as its next attempt, with a line in its log", async () => {
    const row = await running(1);
    const w = worker("w");
    w.slots.get("slot-0")!.job = `${row.id}:1`;
    await reapLeasesOnce(ctx, Date.now() + LEASE - 1_000);
    expect((await getJob(store.db, row.id))!.state).toBe("running");
    await reapLeasesOnce(ctx, Date.now() + LEASE + 1_000);
    const after = (await getJob(store.db, row.id))!;
    expect([after.state, after.attempt, after.worker]).toEqual(["queued", 2, null]);
    expect(readFileSync(ctx.logs.path(row.id), "utf8")).toContain(
      "attempt 1 lost (worker w stopped heartbeating); retrying as attempt 2",
    );
    // The worker, if it is still there, is told to drop the attempt, and its slot is free again.
    expect(w.got).toContainEqual({ type: "job.forget", jobId: row.id, attempt: 1 });
    expect(w.slots.get("slot-0")!.job).toBeNull();
    expect(asked).toBe(1);
  });

  test("a job with no retries left ends failed with reason lost", async () => {
    const row = await running(0);
    await reapLeasesOnce(ctx, Date.now() + LEASE + 1_000);
    const after = (await getJob(store.db, row.id))!;
    expect([after.state, after.reason]).toEqual(["failed", "lost"]);
  });

  test("while the master cannot write, no lease runs out; after, leases get the time back", async () => {
    const row = await running(1);
    ctx.storage.failingSince = Date.now();
    await reapLeasesOnce(ctx, Date.now() + 10 * LEASE);
    expect((await getJob(store.db, row.id))!.state).toBe("running");
    ctx.storage.failingSince = null;
    ctx.storage.recovered = true;
    const recoveredAt = Date.now() + 10 * LEASE;
    await reapLeasesOnce(ctx, recoveredAt);
    expect(ctx.storage.recovered).toBe(false);
    const extended = (await getJob(store.db, row.id))!;
    expect([extended.state, extended.leaseExpiresAt]).toEqual(["running", recoveredAt + LEASE]);
    // From then on the usual rule holds.
    await reapLeasesOnce(ctx, recoveredAt + LEASE + 1);
    expect((await getJob(store.db, row.id))!.state).toBe("queued");
  });
});

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ServerWebSocket } from "bun";
import type { MasterMessage } from "../../protocol/wire.ts";
import { assignJob, finishJob, insertJob } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { testJob } from "../../store/test-job.ts";
import { createToken, type Role } from "../../store/tokens.ts";
import { getWorker, upsertWorker } from "../../store/workers.ts";
import { createApp } from "../app.ts";
import type { MasterContext } from "../context.ts";
import { testContext } from "../test-context.ts";

/*
 * The admin routes (workers: list, drain, hold, release, remove, slot holds; tokens) in process against
 * a real store: roles, unknown and invalid names, and what a connected worker is told.
 */

let dir: string;
let store: Store;
let ctx: MasterContext;
let app: ReturnType<typeof createApp>;
const tokens: Record<string, string> = {};

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-t-admin-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  ctx = testContext(dir, store);
  app = createApp(ctx);
  for (const role of ["admin", "operator", "submitter", "viewer", "worker"] as Role[])
    tokens[role] = (await createToken(store, { role, name: role })).secret;
  await upsertWorker(store, {
    name: "w1",
    arch: "amd64",
    channels: ["default"],
    slots: [{ name: "slot-0", resources: [] }],
    version: "test",
  });
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are checked by the assertions that read them.
type Json = Record<string, any>;

async function call(who: string | null, method: string, path: string, body?: unknown) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (who) headers.authorization = `Bearer ${tokens[who] ?? who}`;
  const res = await app.request(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

const refusal = (r: { status: number; body: Json }) => [r.status, r.body.error?.code];

/** Puts w1 in the registry as connected; `got` is what the master sends it. */
function connect() {
  const got: MasterMessage[] = [];
  ctx.registry.add({
    name: "w1",
    arch: "amd64",
    channels: ["default"],
    slots: new Map([["slot-0", { name: "slot-0", resources: [], held: null, job: null }]]),
    draining: false,
    holdReason: null,
    templates: [],
    send: (m) => got.push(m),
    ws: {} as ServerWebSocket<unknown>,
    instance: null,
    credential: "token:test",
  });
  return got;
}

describe("workers", () => {
  test("viewers list workers with their state; nobody without a token does", async () => {
    expect(refusal(await call(null, "GET", "/workers"))).toEqual([401, "UNAUTHENTICATED"]);
    const offline = (await call("viewer", "GET", "/workers")).body;
    expect(offline.map((w: Json) => [w.name, w.connected, w.state, w.capacity])).toEqual([
      ["w1", false, "offline", 1],
    ]);
    connect();
    const online = (await call("viewer", "GET", "/workers")).body;
    expect(online.map((w: Json) => [w.name, w.connected, w.state])).toEqual([["w1", true, "ready"]]);
  });

  test("drain, hold and release need the operator role", async () => {
    for (const who of ["viewer", "submitter", "worker"])
      for (const action of ["drain", "release"])
        expect(refusal(await call(who, "POST", `/admin/workers/w1/${action}`))).toEqual([403, "FORBIDDEN"]);
    expect((await getWorker(store.db, "w1"))!.draining).toBe(false);
  });

  test("draining a connected worker is stored and told to it; release undoes drain and hold", async () => {
    const got = connect();
    const drained = await call("operator", "POST", "/admin/workers/w1/drain");
    expect([drained.status, drained.body.state]).toEqual([200, "draining"]);
    expect(got).toEqual([{ type: "worker.draining", draining: true }]);
    expect((await getWorker(store.db, "w1"))!.draining).toBe(true);
    const held = await call("operator", "POST", "/admin/workers/w1/hold", { reason: "bad disk" });
    expect([held.body.state, held.body.holdReason]).toEqual(["held", "bad disk"]);
    const released = await call("operator", "POST", "/admin/workers/w1/release");
    expect([released.body.state, released.body.draining, released.body.holdReason]).toEqual([
      "ready",
      false,
      null,
    ]);
    expect(got.at(-1)).toEqual({ type: "worker.draining", draining: false });
  });

  test("a hold needs a reason; an unknown worker is a 404 and an invalid name a 400", async () => {
    expect(refusal(await call("operator", "POST", "/admin/workers/w1/hold", {}))).toEqual([
      400,
      "INVALID_REQUEST",
    ]);
    expect(refusal(await call("operator", "POST", "/admin/workers/w1/hold", { reason: "" }))).toEqual([
      400,
      "INVALID_REQUEST",
    ]);
    expect(
      refusal(await call("operator", "POST", "/admin/workers/w1/hold", { reason: "x", extra: 1 })),
    ).toEqual([400, "INVALID_REQUEST"]);
    expect(refusal(await call("operator", "POST", "/admin/workers/nobody/drain"))).toEqual([
      404,
      "WORKER_NOT_FOUND",
    ]);
    expect(refusal(await call("operator", "POST", "/admin/workers/Bad%20Name/drain"))).toEqual([
      400,
      "INVALID_NAME",
    ]);
  });

  test("a worker is removed only when it is offline and holds no job", async () => {
    connect();
    expect(refusal(await call("operator", "DELETE", "/admin/workers/w1"))).toEqual([409, "WORKER_CONNECTED"]);
    ctx.registry.workers.clear();
    const job = await insertJob(store, testJob());
    await assignJob(store, job.id, "w1", "slot-0", 60_000);
    const busy = await call("operator", "DELETE", "/admin/workers/w1");
    expect(refusal(busy)).toEqual([409, "WORKER_HAS_JOBS"]);
    expect(busy.body.error.message).toContain(`job(s) ${job.id}`);
    // The job ends (its worker reported a result before it went): nothing holds w1 any more.
    await finishJob(
      store,
      job.id,
      1,
      { state: "succeeded", reason: null, exitCode: 0, message: null, peakMemoryBytes: null, cpuMs: null },
      0,
    );
    expect(await call("operator", "DELETE", "/admin/workers/w1")).toEqual({
      status: 200,
      body: { removed: "w1" },
    });
    expect(refusal(await call("operator", "DELETE", "/admin/workers/w1"))).toEqual([404, "WORKER_NOT_FOUND"]);
    expect(refusal(await call("viewer", "DELETE", "/admin/workers/w1"))).toEqual([403, "FORBIDDEN"]);
  });

  test("slot holds go to the connected worker; an offline worker or unknown slot is refused", async () => {
    expect(
      refusal(await call("operator", "POST", "/admin/workers/w1/slots/slot-0/hold", { reason: "fan" })),
    ).toEqual([409, "WORKER_OFFLINE"]);
    expect(refusal(await call("operator", "POST", "/admin/workers/nobody/slots/slot-0/release"))).toEqual([
      404,
      "WORKER_NOT_FOUND",
    ]);
    const got = connect();
    expect(refusal(await call("operator", "POST", "/admin/workers/w1/slots/slot-9/release"))).toEqual([
      404,
      "SLOT_NOT_FOUND",
    ]);
    const held = await call("operator", "POST", "/admin/workers/w1/slots/slot-0/hold", { reason: "fan" });
    expect(held).toEqual({ status: 200, body: { worker: "w1", slot: "slot-0", held: "fan" } });
    await call("operator", "POST", "/admin/workers/w1/slots/slot-0/release");
    expect(got).toEqual([
      { type: "slot.hold", slot: "slot-0", reason: "fan" },
      { type: "slot.release", slot: "slot-0" },
    ]);
  });
});

describe("tokens", () => {
  test("only an admin creates, lists and revokes tokens", async () => {
    for (const who of ["operator", "submitter", "viewer", "worker"]) {
      expect(refusal(await call(who, "POST", "/admin/tokens", { role: "viewer" }))).toEqual([
        403,
        "FORBIDDEN",
      ]);
      expect(refusal(await call(who, "GET", "/admin/tokens"))).toEqual([403, "FORBIDDEN"]);
    }
  });

  test("a created token works at once for its role, is listed without its secret, and stops working when revoked", async () => {
    const made = await call("admin", "POST", "/admin/tokens", {
      role: "submitter",
      name: "ci",
      project: "alpha",
    });
    expect(made.status).toBe(201);
    tokens.ci = made.body.token;
    expect((await call("ci", "POST", "/jobs", { command: ["true"] })).status).toBe(201);
    const listed = (await call("admin", "GET", "/admin/tokens")).body.find(
      (t: Json) => t.id === made.body.id,
    );
    expect([listed.name, listed.role, listed.project, listed.revoked]).toEqual([
      "ci",
      "submitter",
      "alpha",
      false,
    ]);
    expect(JSON.stringify(listed)).not.toContain(made.body.token);
    expect(await call("admin", "DELETE", `/admin/tokens/${made.body.id}`)).toMatchObject({
      status: 200,
      body: { id: made.body.id, revoked: true },
    });
    expect(refusal(await call("ci", "GET", "/jobs"))).toEqual([401, "UNAUTHENTICATED"]);
  });

  test("a bad role, ttl, project or token id is refused with 400; an unknown token id with 404", async () => {
    expect(refusal(await call("admin", "POST", "/admin/tokens", { role: "root" }))).toEqual([
      400,
      "INVALID_REQUEST",
    ]);
    const ttl = await call("admin", "POST", "/admin/tokens", { role: "viewer", ttl: "soon" });
    expect(refusal(ttl)).toEqual([400, "INVALID_REQUEST"]);
    expect(ttl.body.error.message).toMatch(/^ttl: /);
    expect(
      refusal(await call("admin", "POST", "/admin/tokens", { role: "viewer", project: "../x" })),
    ).toEqual([400, "INVALID_NAME"]);
    expect(refusal(await call("admin", "DELETE", "/admin/tokens/zzz"))).toEqual([400, "INVALID_REQUEST"]);
    expect(refusal(await call("admin", "DELETE", "/admin/tokens/0123456789ab"))).toEqual([
      404,
      "TOKEN_NOT_FOUND",
    ]);
  });
});

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { waitFor } from "../../test/harness.ts";
import { setupLogging } from "../lib/log.ts";
import type { Outcome } from "../protocol/job.ts";
import { encodeLogFrame, type MasterMessage, type WorkerMessage } from "../protocol/wire.ts";
import { buildDeb, controlText } from "../repo/deb-build.ts";
import { createToken } from "../store/tokens.ts";
import type { RunningMaster } from "./index.ts";
import { startTestMaster, type TestMaster } from "./test-master.ts";

/*
 * The worker websocket against a real master: Bun.serve on 127.0.0.1, a real libSQL file, and a real
 * WebSocket client that speaks the wire protocol (src/protocol/wire.ts) the way a worker does.
 */

// The refusals below are logged as warnings by design; only errors would say something is wrong here.
setupLogging("json", "error");

let fixture: TestMaster;
let master: RunningMaster;
let admin: string;
let workerToken: string;
const sockets: Wire[] = [];

beforeEach(async () => {
  fixture = await startTestMaster("kiln-t-socket-", {
    KILN_MASTER_HEARTBEAT: "1s",
    KILN_MASTER_LEASE: "30s",
  });
  ({ master, admin } = fixture);
  workerToken = (await createToken(master.ctx.store, { role: "worker", name: "w" })).secret;
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.ws.close();
  await fixture.stop();
});

/** A worker's end of the socket: every message it got, and how it was closed. */
interface Wire {
  ws: WebSocket;
  got: MasterMessage[];
  closed: Promise<{ code: number; reason: string }>;
  send(m: WorkerMessage): void;
  /** Waits for the next message of `type` not taken yet, and takes it. */
  next<T extends MasterMessage["type"]>(type: T): Promise<Extract<MasterMessage, { type: T }>>;
}

async function connect(token = workerToken): Promise<Wire> {
  const ws = new WebSocket(`${master.url.replace("http", "ws")}/api/v1/worker/connect`, {
    headers: { authorization: `Bearer ${token}` },
  } as unknown as string[]);
  const got: MasterMessage[] = [];
  const taken = new Set<MasterMessage>();
  ws.onmessage = (e) => got.push(JSON.parse(String(e.data)));
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
  });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("the websocket did not open"));
  });
  const wire: Wire = {
    ws,
    got,
    closed,
    send: (m) => ws.send(JSON.stringify(m)),
    async next(type) {
      const m = await waitFor(
        `a ${type} message`,
        () => got.find((g) => g.type === type && !taken.has(g)),
        5_000,
      );
      taken.add(m);
      return m as never;
    },
  };
  sockets.push(wire);
  return wire;
}

type Hello = Extract<WorkerMessage, { type: "worker.hello" }>;
const hello = (name: string, over: Partial<Hello> = {}): Hello => ({
  type: "worker.hello",
  name,
  arch: "amd64",
  channels: ["default"],
  version: "test",
  slots: [{ name: "slot-0", resources: [], held: null }],
  running: [],
  finished: [],
  instance: `instance-of-${name}`,
  ...over,
});

async function api(method: string, path: string, body?: unknown) {
  const res = await fetch(`${master.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are checked by the assertions that read them.
  return { status: res.status, body: (await res.json()) as any };
}

const outcome = (over: Partial<Outcome> = {}): Outcome => ({
  state: "succeeded",
  reason: null,
  exitCode: 0,
  message: null,
  peakMemoryBytes: null,
  cpuMs: null,
  ...over,
});

describe("connecting", () => {
  test("the worker endpoint refuses a request without a worker token (401) or with a client token (403), and one that is no websocket", async () => {
    const url = `${master.url}/api/v1/worker/connect`;
    const none = await fetch(url);
    expect([none.status, ((await none.json()) as { error: { code: string } }).error.code]).toEqual([
      401,
      "UNAUTHENTICATED",
    ]);
    const viewer = (await createToken(master.ctx.store, { role: "viewer", name: "v" })).secret;
    expect((await fetch(url, { headers: { authorization: `Bearer ${viewer}` } })).status).toBe(403);
    // Not even the admin token speaks the worker protocol: workers join with worker tokens.
    expect((await fetch(url, { headers: { authorization: `Bearer ${admin}` } })).status).toBe(403);
    const plain = await fetch(url, { headers: { authorization: `Bearer ${workerToken}` } });
    expect([plain.status, ((await plain.json()) as { error: { code: string } }).error.code]).toEqual([
      426,
      "UPGRADE_REQUIRED",
    ]);
    // A viewer token cannot open the socket either.
    const ws = new WebSocket(`${url.replace("http", "ws")}`, {
      headers: { authorization: `Bearer ${viewer}` },
    } as unknown as string[]);
    const refused = await new Promise<string>((resolve) => {
      ws.onerror = () => resolve("error");
      ws.onopen = () => resolve("open");
    });
    expect(refused).toBe("error");
  });

  test("a hello is welcomed with the lease terms and the drain state, and the worker is listed connected", async () => {
    const w = await connect();
    w.send(hello("t-one"));
    expect(await w.next("worker.welcome")).toEqual({
      type: "worker.welcome",
      heartbeatMs: 1000,
      leaseMs: 30_000,
    });
    expect(await w.next("worker.draining")).toEqual({ type: "worker.draining", draining: false });
    const { body } = await api("GET", "/workers");
    expect(body.map((x: { name: string; connected: boolean }) => [x.name, x.connected])).toEqual([
      ["t-one", true],
    ]);
    w.ws.close();
    await waitFor(
      "the worker to be listed offline",
      async () => !(await api("GET", "/workers")).body[0].connected,
    );
  });

  test("anything before a hello closes the connection with 4002", async () => {
    const w = await connect();
    w.send({ type: "worker.heartbeat", running: [] });
    expect((await w.closed).code).toBe(4002);
  });

  test("a hello with an invalid name is refused and closed with 4000", async () => {
    const w = await connect();
    w.send(hello("../etc"));
    expect((await w.next("worker.refused")).message).toContain('worker name "../etc" is not a valid name');
    expect((await w.closed).code).toBe(4000);
  });

  test("a second worker under a connected name (another instance) is refused; the first keeps its place", async () => {
    const first = await connect();
    first.send(hello("t-twin", { instance: "aaa" }));
    await first.next("worker.welcome");
    const second = await connect();
    second.send(hello("t-twin", { instance: "bbb" }));
    expect((await second.next("worker.refused")).message).toContain("worker name t-twin is in use");
    expect((await second.closed).code).toBe(4003);
    expect(master.ctx.registry.workers.get("t-twin")?.instance).toBe("aaa");
    expect(first.ws.readyState).toBe(WebSocket.OPEN);
  });

  test("the same instance connecting again replaces its old connection (4001)", async () => {
    const old = await connect();
    old.send(hello("t-again"));
    await old.next("worker.welcome");
    const fresh = await connect();
    fresh.send(hello("t-again"));
    await fresh.next("worker.welcome");
    expect((await old.closed).code).toBe(4001);
    const { body } = await api("GET", "/workers");
    expect(body.map((x: { connected: boolean }) => x.connected)).toEqual([true]);
  });

  test("a message of a type the master does not know is skipped and the connection keeps working", async () => {
    const w = await connect();
    w.send(hello("t-odd"));
    await w.next("worker.welcome");
    w.ws.send(JSON.stringify({ type: "worker.nonsense" }));
    w.send({ type: "template.get", requestId: 7, name: "nope" });
    const answer = await w.next("template.spec");
    expect([answer.requestId, answer.template, answer.error]).toEqual([
      7,
      null,
      expect.stringContaining("nope"),
    ]);
  });
});

describe("frames the master cannot read", () => {
  const header = (h: unknown) => {
    const json = new TextEncoder().encode(JSON.stringify(h));
    const out = new Uint8Array(4 + json.length + 3);
    new DataView(out.buffer).setUint32(0, json.length);
    out.set(json, 4);
    return out;
  };
  const bad: [string, string | Uint8Array][] = [
    ["a text frame that is not JSON", "{not json"],
    [
      "a known message with a field of the wrong kind",
      JSON.stringify({ type: "worker.heartbeat", running: 5 }),
    ],
    [
      "a progress report out of range",
      JSON.stringify({ type: "job.progress", jobId: 1, attempt: 1, percent: 400, message: null }),
    ],
    ["a binary frame shorter than its length prefix", new Uint8Array([0, 0])],
    ["a log frame whose header length passes the frame", new Uint8Array([0, 0, 0, 200, 1, 2])],
    ["a log frame whose header is not JSON", new Uint8Array([0, 0, 0, 2, 0x7b, 0xff])],
    ["a log frame with a negative offset", header({ j: 1, a: 1, o: -5 })],
    ["a log frame with a fractional job id", header({ j: 1.5, a: 1, o: 0 })],
  ];
  for (const [what, frame] of bad) {
    test(`${what} closes the connection with 4400, once`, async () => {
      const w = await connect();
      w.send(hello(`t-bad-${bad.findIndex(([x]) => x === what)}`));
      await w.next("worker.welcome");
      w.ws.send(frame);
      // More of the same after the first is not handled (nor logged) again.
      w.ws.send(frame);
      expect((await w.closed).code).toBe(4400);
      // The master goes on serving.
      expect((await api("GET", "/workers")).status).toBe(200);
    });
  }
});

describe("jobs over the socket", () => {
  async function assigned(name: string) {
    const w = await connect();
    w.send(hello(name));
    await w.next("worker.welcome");
    const { status, body } = await api("POST", "/jobs", { command: ["echo", "hi"] });
    expect(status).toBe(201);
    const a = await w.next("job.assign");
    expect([a.job.id, a.slot, a.job.attempt]).toEqual([body.id, "slot-0", 1]);
    return { w, id: body.id as number };
  }

  test("a job is pushed to a free slot; its log and result are recorded and acknowledged", async () => {
    const { w, id } = await assigned("t-run");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    await waitFor("the job to run", async () => (await api("GET", `/jobs/${id}`)).body.state === "running");
    const text = new TextEncoder().encode("hello from the job\n");
    w.ws.send(encodeLogFrame({ jobId: id, attempt: 1, offset: 0, data: text }));
    w.send({ type: "job.finished", jobId: id, attempt: 1, outcome: outcome(), logSize: text.length });
    expect(await w.next("job.ack")).toEqual({ type: "job.ack", jobId: id, attempt: 1 });
    const job = (await api("GET", `/jobs/${id}`)).body;
    expect([job.state, job.exitCode]).toEqual(["succeeded", 0]);
    const log = await fetch(`${master.url}/api/v1/jobs/${id}/log`, {
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(await log.text()).toBe("hello from the job\n");
    // The slot is free again: the next job goes to it.
    await api("POST", "/jobs", { command: ["true"] });
    expect((await w.next("job.assign")).job.id).toBe(id + 1);
  });

  test("a job with --repo ends only once its packages are published; a refused publish ends it failed with reason publish", async () => {
    expect((await api("POST", "/repos", { name: "tools", format: "deb" })).status).toBe(201);
    const w = await connect();
    w.send(hello("t-publish"));
    await w.next("worker.welcome");
    const run = async (version: string) => {
      const { body } = await api("POST", "/jobs", { command: ["true"], repo: "tools" });
      const id = body.id as number;
      const assigned = await w.next("job.assign");
      w.send({ type: "job.started", jobId: id, attempt: 1 });
      // The worker delivers the artifacts before it reports the result, with the job's own credential.
      const deb = buildDeb({ control: controlText({ name: "kiln-w", version, arch: "amd64" }) });
      const put = await fetch(`${master.url}/api/v1/worker/artifacts/${id}/1/kiln-w.deb`, {
        method: "PUT",
        headers: {
          authorization: `Bearer ${assigned.job.credential}`,
          "x-kiln-sha256": new Bun.CryptoHasher("sha256").update(deb).digest("hex"),
          "x-kiln-size": String(deb.length),
        },
        body: deb,
      });
      expect(put.status).toBe(201);
      w.send({ type: "job.finished", jobId: id, attempt: 1, outcome: outcome(), logSize: 0 });
      expect(await w.next("job.ack")).toEqual({ type: "job.ack", jobId: id, attempt: 1 });
      const log = await fetch(`${master.url}/api/v1/jobs/${id}/log`, {
        headers: { authorization: `Bearer ${admin}` },
      });
      return { job: (await api("GET", `/jobs/${id}`)).body, log: await log.text() };
    };
    const first = await run("2.0");
    expect([first.job.state, first.job.reason]).toEqual(["succeeded", null]);
    expect(first.log).toContain("--- kiln: published into repository tools: kiln-w 2.0 (amd64) ---");
    const older = await run("1.0");
    expect([older.job.state, older.job.reason, older.job.exitCode]).toEqual(["failed", "publish", 0]);
    expect(older.job.message).toContain("kiln-w 1.0 (amd64) is not newer than 2.0 in repository tools");
    expect(older.log).toContain("--- kiln: publishing into repository tools failed:");
    expect(
      (await api("GET", "/repos/tools/packages")).body.map((p: { version: string }) => p.version),
    ).toEqual(["2.0"]);
  }, 60_000);

  test("a result whose log bytes did not all arrive is held back, and the master asks from what it has", async () => {
    const { w, id } = await assigned("t-gap");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    const first = new TextEncoder().encode("0123456789");
    w.ws.send(encodeLogFrame({ jobId: id, attempt: 1, offset: 0, data: first }));
    w.send({ type: "job.finished", jobId: id, attempt: 1, outcome: outcome(), logSize: 20 });
    expect(await w.next("job.log.from")).toEqual({ type: "job.log.from", jobId: id, attempt: 1, offset: 10 });
    expect((await api("GET", `/jobs/${id}`)).body.state).toBe("running");
    // A frame from the wrong offset (past a gap) is not written, and the master says where to go on from.
    w.ws.send(encodeLogFrame({ jobId: id, attempt: 1, offset: 15, data: new TextEncoder().encode("XXXXX") }));
    expect((await w.next("job.log.from")).offset).toBe(10);
    w.ws.send(
      encodeLogFrame({ jobId: id, attempt: 1, offset: 10, data: new TextEncoder().encode("abcdefghij") }),
    );
    w.send({ type: "job.finished", jobId: id, attempt: 1, outcome: outcome(), logSize: 20 });
    await w.next("job.ack");
    const log = await fetch(`${master.url}/api/v1/jobs/${id}/log`, {
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(await log.text()).toBe("0123456789abcdefghij");
  });

  test("a report about an attempt that is not the job's current one changes nothing but is acknowledged", async () => {
    const { w, id } = await assigned("t-stale");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    w.send({
      type: "job.finished",
      jobId: id,
      attempt: 5,
      outcome: outcome({ state: "failed", exitCode: 3 }),
      logSize: 0,
    });
    expect(await w.next("job.ack")).toEqual({ type: "job.ack", jobId: id, attempt: 5 });
    expect((await api("GET", `/jobs/${id}`)).body.state).toBe("running");
  });

  test("a refused assignment goes back to the queue, and the slot pauses before it is offered again", async () => {
    const { w, id } = await assigned("t-refuse");
    w.send({ type: "job.refused", jobId: id, attempt: 1, message: "slot busy" });
    await waitFor(
      "the job to be queued again",
      async () => (await api("GET", `/jobs/${id}`)).body.state === "queued",
    );
    // After the pause (250 ms for a first refusal) the same slot is offered the job again, as attempt 2.
    const again = await w.next("job.assign");
    expect([again.job.id, again.job.attempt]).toEqual([id, 2]);
  });

  test("cancelling a running job tells its worker", async () => {
    const { w, id } = await assigned("t-cancel");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    await waitFor("the job to run", async () => (await api("GET", `/jobs/${id}`)).body.state === "running");
    expect((await api("POST", `/jobs/${id}/cancel`)).status).toBe(200);
    expect(await w.next("job.cancel")).toEqual({ type: "job.cancel", jobId: id, attempt: 1 });
  });

  test("a worker cannot finish, log into or report progress on another worker's job", async () => {
    const { w, id } = await assigned("t-owner");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    await waitFor("the job to run", async () => (await api("GET", `/jobs/${id}`)).body.state === "running");
    w.ws.send(encodeLogFrame({ jobId: id, attempt: 1, offset: 0, data: new TextEncoder().encode("mine\n") }));
    const rogue = await connect();
    rogue.send(hello("t-rogue"));
    await rogue.next("worker.welcome");
    rogue.ws.send(
      encodeLogFrame({ jobId: id, attempt: 1, offset: 5, data: new TextEncoder().encode("forged\n") }),
    );
    rogue.send({ type: "job.progress", jobId: id, attempt: 1, percent: 99, message: "forged" });
    rogue.send({
      type: "job.finished",
      jobId: id,
      attempt: 1,
      outcome: outcome({ state: "failed", reason: "exit", exitCode: 66 }),
      logSize: 0,
    });
    // The rogue is answered as for a job it does not hold (acknowledged, so it forgets it), and nothing
    // of the job changed.
    expect(await rogue.next("job.ack")).toEqual({ type: "job.ack", jobId: id, attempt: 1 });
    const job = (await api("GET", `/jobs/${id}`)).body;
    expect([job.state, job.progress]).toEqual(["running", null]);
    const log = await fetch(`${master.url}/api/v1/jobs/${id}/log`, {
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(await log.text()).toBe("mine\n");
    w.send({ type: "job.finished", jobId: id, attempt: 1, outcome: outcome(), logSize: 5 });
    await w.next("job.ack");
    expect((await api("GET", `/jobs/${id}`)).body.state).toBe("succeeded");
  });

  test("a worker that says it is stopping has its jobs re-queued at once and gets no new ones", async () => {
    const { w, id } = await assigned("t-stop");
    w.send({ type: "job.started", jobId: id, attempt: 1 });
    await waitFor("the job to run", async () => (await api("GET", `/jobs/${id}`)).body.state === "running");
    w.send({ type: "worker.stopping", running: [{ jobId: id, attempt: 1 }] });
    await waitFor(
      "the job to be queued again",
      async () => (await api("GET", `/jobs/${id}`)).body.state === "queued",
    );
    expect(await w.next("job.forget")).toEqual({ type: "job.forget", jobId: id, attempt: 1 });
    await master.ctx.dispatched();
    expect(w.got.filter((m) => m.type === "job.assign")).toHaveLength(1);
  });
});

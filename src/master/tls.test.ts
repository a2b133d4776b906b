import { afterEach, beforeEach, expect, setDefaultTimeout, test } from "bun:test";
import { join } from "node:path";
import { createConsola } from "consola";
import { waitFor } from "../../test/harness.ts";
import { setupLogging } from "../lib/log.ts";
import type { MasterMessage, WorkerMessage } from "../protocol/wire.ts";
import { assignJob, insertJob } from "../store/jobs.ts";
import { testJob } from "../store/test-job.ts";
import { createToken } from "../store/tokens.ts";
import { clientTls, identityHeaders, joinMaster } from "../tls/join.ts";
import type { WorkerIdentity } from "../tls/proof.ts";
import { x509 } from "../tls/x509.ts";
import type { RunningMaster } from "./index.ts";
import { startTestMaster, type TestMaster } from "./test-master.ts";
import { warnServerCertificateOnce } from "./tls.ts";

/*
 * A master serving TLS, in process: Bun.serve with the master's CA on 127.0.0.1, a real libSQL file,
 * workers that join through the real enrollment routes and speak over fetch and WebSocket with their
 * certificates. What is checked is the wiring: who may say what, and what a revocation reaches.
 */

// Refusals are logged as warnings by design; only errors would say something is wrong here.
setupLogging("json", "error");
// Key generation and TLS handshakes share two cores with other test runs.
setDefaultTimeout(30_000);

let fixture: TestMaster;
let dir: string;
let master: RunningMaster;
let admin: string;
let ca: string;
const sockets: WebSocket[] = [];

beforeEach(async () => {
  fixture = await startTestMaster("kiln-t-mtls-", {
    KILN_MASTER_TLS: "true",
    KILN_MASTER_TLS_NAMES: "127.0.0.1",
  });
  ({ dir, master, admin } = fixture);
  ca = master.ctx.tls!.authority.caPem;
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close();
  await fixture.stop();
});

async function api(method: string, path: string, body?: unknown, token = admin) {
  const res = await fetch(`${master.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    tls: { ca },
  });
  // biome-ignore lint/suspicious/noExplicitAny: response bodies are checked by the assertions that read them.
  return { status: res.status, body: (await res.json()) as any };
}

/** Enrolls `name` with a join token from the API; returns its identity and the token's id. */
async function enroll(name: string): Promise<{ id: WorkerIdentity; tokenId: string }> {
  const made = await api("POST", "/admin/tokens", { role: "worker" });
  expect(made.status).toBe(201);
  const id = await joinMaster({
    masterUrl: master.url,
    token: made.body.token,
    worker: name,
    dir: join(dir, "workers", name),
  });
  return { id, tokenId: made.body.id };
}

/** A worker's websocket with its certificate and proof; resolves once open, with what it receives and how it closes. */
async function connect(id: WorkerIdentity) {
  const path = "/api/v1/worker/connect";
  const ws = new WebSocket(`${master.url.replace("https", "wss")}${path}`, {
    headers: await identityHeaders(id, "GET", path),
    tls: clientTls(id),
  } as unknown as string[]);
  sockets.push(ws);
  const got: MasterMessage[] = [];
  ws.onmessage = (e) => got.push(JSON.parse(String(e.data)));
  const closed = new Promise<number>((resolve) => {
    ws.onclose = (e) => resolve(e.code);
  });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("the websocket did not open"));
  });
  return { ws, got, closed, send: (m: WorkerMessage) => ws.send(JSON.stringify(m)) };
}

const hello = (name: string): WorkerMessage => ({
  type: "worker.hello",
  name,
  arch: "amd64",
  channels: ["default"],
  version: "test",
  slots: [{ name: "slot-0", resources: [], held: null }],
  running: [],
  finished: [],
  instance: `instance-of-${name}`,
});

test("a join token from the API pins the CA, expires, has no project, and is listed with who used it", async () => {
  const made = await api("POST", "/admin/tokens", { role: "worker", ttl: "1h" });
  expect(made.body.token).toStartWith(`kiln1.${master.ctx.tls!.authority.anchorFingerprint}.`);
  expect(Date.parse(made.body.expiresAt) - Date.now()).toBeLessThanOrEqual(3_600_000);
  const scoped = await api("POST", "/admin/tokens", { role: "worker", project: "p" });
  expect([scoped.status, scoped.body.error.code]).toEqual([400, "INVALID_REQUEST"]);
  const listed = (await api("GET", "/admin/tokens")).body.find((t: { id: string }) => t.id === made.body.id);
  expect([listed.kind, listed.usedBy, listed.revoked]).toEqual(["join", null, false]);
});

test("a certificate speaks for its own worker only: a hello under another name is refused", async () => {
  const { id } = await enroll("t-mine");
  const w = await connect(id);
  w.send(hello("t-theirs"));
  expect(await w.closed).toBe(4003);
  expect(w.got.find((m) => m.type === "worker.refused")).toMatchObject({
    message: expect.stringContaining("certificate is for t-mine, not t-theirs"),
  });
  const ok = await connect(id);
  ok.send(hello("t-mine"));
  await waitFor("the welcome", () => ok.got.some((m) => m.type === "worker.welcome"));
  expect(master.ctx.registry.workers.get("t-mine")?.credential).toStartWith("cert:");
});

test("a worker bearer token is refused on a TLS master, and a certified worker adds files only to its own attempts", async () => {
  const bearer = (await createToken(master.ctx.store, { role: "worker", name: "old" })).secret;
  const refused = await api("GET", "/jobs/1/artifacts", undefined, bearer);
  expect([refused.status, refused.body.error.code]).toEqual([401, "WORKER_CERT_MISSING"]);
  const { id } = await enroll("t-up");
  const job = await insertJob(master.ctx.store, testJob({ channel: "nobody" }));
  await assignJob(master.ctx.store, job.id, "t-other", "slot-0", 60_000);
  const path = `/api/v1/worker/artifacts/${job.id}/1/x.txt`;
  const res = await fetch(`${master.url}${path}`, {
    headers: {
      ...(await identityHeaders(id, "GET", path)),
      "x-kiln-sha256": "0".repeat(64),
      "x-kiln-size": "1",
    },
    tls: clientTls(id),
  });
  expect([res.status, ((await res.json()) as { error: { code: string } }).error.code]).toEqual([
    403,
    "FORBIDDEN",
  ]);
});

test("revoking a used join token closes the connection of the worker it enrolled, which cannot come back", async () => {
  const { id, tokenId } = await enroll("t-gone");
  const w = await connect(id);
  w.send(hello("t-gone"));
  await waitFor("the welcome", () => w.got.some((m) => m.type === "worker.welcome"));
  expect((await api("DELETE", `/admin/tokens/${tokenId}`)).status).toBe(200);
  expect(await w.closed).toBe(4004);
  expect(master.ctx.registry.workers.has("t-gone")).toBe(false);
  await expect(connect(id)).rejects.toThrow("did not open");
});

test("kiln workers rm on a TLS master revokes, disconnects and puts the worker's jobs back in the queue", async () => {
  const { id } = await enroll("t-rm");
  const w = await connect(id);
  w.send(hello("t-rm"));
  await waitFor("the welcome", () => w.got.some((m) => m.type === "worker.welcome"));
  const submitted = await api("POST", "/jobs", { command: ["sleep", "60"], retries: 1 });
  await waitFor("the assignment", () => w.got.some((m) => m.type === "job.assign"));
  const rm = await api("DELETE", "/admin/workers/t-rm");
  expect(rm.body).toEqual({ removed: "t-rm", revokedCertificates: 1 });
  expect(await w.closed).toBe(4004);
  const job = await api("GET", `/jobs/${submitted.body.id}`);
  expect([job.body.state, job.body.attempt]).toEqual(["queued", 2]);
});

test("a server certificate past two-thirds of its life is said at warn once a day, with what to do", () => {
  const said: string[] = [];
  master.ctx.log = createConsola({
    level: 3,
    reporters: [{ log: (o) => said.push(`${o.type} ${o.args.join(" ")}`) }],
  });
  const end = new x509.X509Certificate(master.ctx.tls!.authority.serverCertPem).notAfter.getTime();
  warnServerCertificateOnce(master.ctx, end - 200 * 86_400_000);
  expect(said).toEqual([]);
  warnServerCertificateOnce(master.ctx, end - 86_400_000);
  warnServerCertificateOnce(master.ctx, end - 86_400_000 + 60_000);
  expect(said.length).toBe(1);
  expect(said[0]).toMatch(/^warn the server certificate ends at .*: restart the master/);
});

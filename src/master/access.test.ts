import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ServerWebSocket } from "bun";
import { waitFor } from "../../test/harness.ts";
import { setupLogging } from "../lib/log.ts";
import type { Outcome } from "../protocol/job.ts";
import { buildDeb, controlText } from "../repo/deb-build.ts";
import { assignJob, finishJob, getJob, insertJob, markRunning, requeueOrLose } from "../store/jobs.ts";
import { testJob } from "../store/test-job.ts";
import { createToken, revokeToken } from "../store/tokens.ts";
import { upsertWorker } from "../store/workers.ts";
import { type Access, type ClientRole, describeAccess, WORKER_SOCKET } from "./access.ts";
import { type App, createApp, routeTable } from "./app.ts";
import { RANK } from "./auth.ts";
import type { RunningMaster } from "./index.ts";
import { newJobCredential } from "./job-credential.ts";
import { OPENAPI } from "./routes/public.ts";
import { startTestMaster, type TestMaster } from "./test-master.ts";

/*
 * The access matrix: every route of the route table, and the worker websocket, tried with every kind of
 * credential, each answer compared with what the route's declared rule says it must be. HTTP goes through
 * app.request against a real libSQL file; the websocket through a real Bun.serve on port 0. A route
 * without a rule, or without a fixture here to call it with, fails the first test: adding a route means
 * declaring who may call it.
 */

setupLogging("json", "error");
// The repository fixtures sign their metadata with gpg: seconds each, more on a busy machine.
setDefaultTimeout(120_000);

let fixture: TestMaster;
let master: RunningMaster;
let app: App;
let n = 0;

/** The kinds of credential every route is tried with. */
type Cred =
  | { name: string; kind: "none" | "revoked" | "expired" | "worker" | "own job" | "other job" | "ended job" }
  | { name: string; kind: "role"; role: ClientRole; project: "alpha" | "beta" | null };

const CREDS: Cred[] = [
  { name: "no credential", kind: "none" },
  { name: "admin", kind: "role", role: "admin", project: null },
  { name: "operator", kind: "role", role: "operator", project: null },
  { name: "submitter", kind: "role", role: "submitter", project: null },
  { name: "viewer", kind: "role", role: "viewer", project: null },
  { name: "operator of project alpha (the fixtures' own)", kind: "role", role: "operator", project: "alpha" },
  { name: "submitter of project alpha", kind: "role", role: "submitter", project: "alpha" },
  { name: "operator of project beta (another project)", kind: "role", role: "operator", project: "beta" },
  { name: "viewer of project beta", kind: "role", role: "viewer", project: "beta" },
  { name: "a revoked admin token", kind: "revoked" },
  { name: "an expired admin token", kind: "expired" },
  { name: "a worker token", kind: "worker" },
  { name: "the job's own credential", kind: "own job" },
  { name: "another running job's credential", kind: "other job" },
  { name: "an ended job's credential", kind: "ended job" },
];

/**
 * What a credential must get from a route with rule `a`: "ok" (the fixture's success status), 401, 403,
 * or 404 (a job or release of another project is answered as if it did not exist).
 */
function expected(a: Access, c: Cred): "ok" | 401 | 403 | 404 {
  if (a.who === "anyone") return "ok";
  if (c.kind === "none" || c.kind === "revoked" || c.kind === "expired" || c.kind === "ended job") return 401;
  // The fixtures' repository is private to project alpha: whoever may not read it is told there is none.
  // A job's credential reads it when that job named it (`--use-repo`), as "the job's own" does there.
  if (a.who === "repo-reader")
    return (c.kind === "role" && c.project !== "beta") || c.kind === "own job" ? "ok" : 404;
  if (a.who === "job") return c.kind === "own job" ? "ok" : 403;
  if (a.who === "worker") return c.kind === "worker" ? "ok" : 403;
  if (c.kind === "own job" || c.kind === "other job") return 403;
  if (c.kind === "worker") return a.who === "client" && a.workers ? "ok" : 403;
  if (c.kind !== "role" || a.who !== "client") throw new Error(`no rule for ${c.kind} on ${a.who}`);
  if (RANK[c.role] < RANK[a.role]) return 403;
  if (c.project === null) return "ok";
  if (a.scope === "global") return 403;
  if (c.project === "alpha") return "ok";
  if (a.scope === "job" || a.scope === "release" || a.scope === "repo" || a.scope === "body-job") return 404;
  if (a.scope === "body-project") return 403;
  return "ok";
}

const secrets: Record<string, string> = {};

/** A request to make for one case, and what success looks like. */
interface Case {
  path: string;
  body?: unknown;
  raw?: Uint8Array;
  headers?: Record<string, string>;
  ok: number;
  /** The job whose credential is "the job's own" for this case (else any running job's). */
  credential?: string;
  /** For list routes: the projects of what the answer shows. */
  projects?(body: unknown): string[];
}

const json = (body: unknown) => JSON.stringify(body);

async function call(secret: string | null, method: string, path: string, c: Partial<Case> = {}) {
  const headers: Record<string, string> = { "content-type": "application/json", ...c.headers };
  if (secret) headers.authorization = `Bearer ${secret}`;
  const res = await app.request(path, {
    method,
    headers,
    body: c.raw ?? (c.body === undefined ? undefined : json(c.body)),
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (metrics, a release file): kept as text.
  }
  return { status: res.status, body };
}

/** Calls as the unscoped admin, expecting success. */
async function admin(method: string, path: string, body?: unknown) {
  const r = await call(secrets.admin!, method, path, { body });
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${json(r.body)}`);
  // biome-ignore lint/suspicious/noExplicitAny: fixture answers are read by the fixture that asked.
  return r.body as any;
}

const OUTCOME: Outcome = {
  state: "succeeded",
  reason: null,
  exitCode: 0,
  message: null,
  peakMemoryBytes: null,
  cpuMs: null,
};

/** A job of project alpha in `state`, with its attempt's credential when it was assigned. */
async function job(
  state: "queued" | "running" | "succeeded" = "queued",
  project = "alpha",
  useRepos: string[] = [],
) {
  const row = await insertJob(
    master.ctx.store,
    testJob({
      name: "fixture",
      project,
      // A channel no worker serves, so the dispatcher leaves the queued ones be.
      channel: "fixtures",
      useRepos,
    }),
  );
  if (state === "queued") return { id: row.id, credential: "" };
  const credential = newJobCredential(row.id);
  await assignJob(master.ctx.store, row.id, "w1", "slot-0", 3_600_000, Date.now(), credential.hash);
  await markRunning(master.ctx.store, row.id, 1, "w1", 3_600_000);
  if (state === "succeeded") await finishJob(master.ctx.store, row.id, 1, OUTCOME, 0);
  return { id: row.id, credential: credential.secret };
}

const CONTENT = new TextEncoder().encode("artifact bytes\n");
const SHA = new Bun.CryptoHasher("sha256").update(CONTENT).digest("hex");
const claim = { "x-kiln-sha256": SHA, "x-kiln-size": String(CONTENT.length) };

/** A succeeded alpha job with artifact out.bin, uploaded through the route with the job's credential. */
async function shippedJob() {
  const j = await job("running");
  const put = await call(j.credential, "PUT", `/api/v1/worker/artifacts/${j.id}/1/out.bin`, {
    raw: CONTENT,
    headers: claim,
  });
  if (put.status !== 201) throw new Error(`upload: ${put.status} ${json(put.body)}`);
  await finishJob(master.ctx.store, j.id, 1, OUTCOME, 0);
  return j.id;
}

const RECIPE = 'description = "fixture"\nscript = "true"\n';
const TEMPLATE = {
  kind: "debootstrap",
  suite: "bookworm",
  mirror: "http://deb.debian.org/debian",
  variant: "minbase",
  include: [],
  packages: [],
};
const projectsOf = (body: unknown) => (body as { project: string }[]).map((x) => x.project);

let shipped = 0;
let release = "";

/** How to call each route so that it succeeds for a caller it admits; state is made fresh per case. */
const FIXTURES: Record<string, (admitted: boolean) => Promise<Case>> = {
  "GET /healthz": async () => ({ path: "/healthz", ok: 200 }),
  "GET /readyz": async () => ({ path: "/readyz", ok: 200 }),
  "GET /metrics": async () => ({ path: "/metrics", ok: 200 }),
  "GET /api/v1/openapi.json": async () => ({ path: "/api/v1/openapi.json", ok: 200 }),
  "GET /": async () => ({ path: "/", ok: 200 }),
  "GET /releases/:tag/": async () => ({ path: `/releases/${release}/`, ok: 200 }),
  "GET /releases/:tag/:file": async () => ({ path: `/releases/${release}/out.bin`, ok: 200 }),
  "POST /api/v1/jobs": async () => ({
    path: "/api/v1/jobs",
    body: { command: ["true"], project: "alpha", channel: "fixtures" },
    ok: 201,
  }),
  "GET /api/v1/jobs": async () => ({ path: "/api/v1/jobs", ok: 200, projects: projectsOf }),
  "GET /api/v1/jobs/:id": async () => ({ path: `/api/v1/jobs/${(await job()).id}`, ok: 200 }),
  "GET /api/v1/jobs/:id/events": async () => ({ path: `/api/v1/jobs/${(await job()).id}/events`, ok: 200 }),
  "GET /api/v1/jobs/:id/log": async () => ({ path: `/api/v1/jobs/${(await job()).id}/log`, ok: 200 }),
  "POST /api/v1/jobs/:id/cancel": async () => ({ path: `/api/v1/jobs/${(await job()).id}/cancel`, ok: 200 }),
  "POST /api/v1/jobs/:id/retry": async () => ({
    path: `/api/v1/jobs/${(await job("succeeded")).id}/retry`,
    ok: 201,
  }),
  "POST /api/v1/jobs/:id/rebuild": async () => ({
    path: `/api/v1/jobs/${(await job("succeeded")).id}/rebuild`,
    ok: 201,
  }),
  "GET /api/v1/workers": async () => ({ path: "/api/v1/workers", ok: 200 }),
  "POST /api/v1/admin/workers/:name/drain": async () => ({
    path: `/api/v1/admin/workers/${await offlineWorker()}/drain`,
    ok: 200,
  }),
  "POST /api/v1/admin/workers/:name/hold": async () => ({
    path: `/api/v1/admin/workers/${await offlineWorker()}/hold`,
    body: { reason: "fixture" },
    ok: 200,
  }),
  "POST /api/v1/admin/workers/:name/release": async () => ({
    path: `/api/v1/admin/workers/${await offlineWorker()}/release`,
    ok: 200,
  }),
  "DELETE /api/v1/admin/workers/:name": async () => ({
    path: `/api/v1/admin/workers/${await offlineWorker()}`,
    ok: 200,
  }),
  "POST /api/v1/admin/workers/:name/slots/:slot/hold": async () => ({
    path: "/api/v1/admin/workers/w1/slots/slot-0/hold",
    body: { reason: "fixture" },
    ok: 200,
  }),
  "POST /api/v1/admin/workers/:name/slots/:slot/release": async () => ({
    path: "/api/v1/admin/workers/w1/slots/slot-0/release",
    ok: 200,
  }),
  "POST /api/v1/admin/tokens": async () => ({
    path: "/api/v1/admin/tokens",
    body: { role: "viewer", name: "made" },
    ok: 201,
  }),
  "GET /api/v1/admin/tokens": async () => ({ path: "/api/v1/admin/tokens", ok: 200 }),
  "DELETE /api/v1/admin/tokens/:id": async () => ({
    path: `/api/v1/admin/tokens/${(await createToken(master.ctx.store, { role: "viewer", name: "doomed" })).id}`,
    ok: 200,
  }),
  "GET /api/v1/recipes": async () => ({ path: "/api/v1/recipes", ok: 200 }),
  "POST /api/v1/recipes": async () => ({
    path: "/api/v1/recipes",
    body: { name: `r${++n}`, source: RECIPE },
    ok: 201,
  }),
  "GET /api/v1/recipes/:name": async () => ({ path: `/api/v1/recipes/${await recipe()}`, ok: 200 }),
  "DELETE /api/v1/recipes/:name": async () => ({ path: `/api/v1/recipes/${await recipe()}`, ok: 200 }),
  "POST /api/v1/templates": async () => ({
    path: "/api/v1/templates",
    body: { name: `t${++n}`, recipe: TEMPLATE },
    ok: 201,
  }),
  "GET /api/v1/templates": async () => ({ path: "/api/v1/templates", ok: 200 }),
  "GET /api/v1/templates/:name": async () => ({ path: `/api/v1/templates/${await template()}`, ok: 200 }),
  "POST /api/v1/templates/:name/build": async () => ({
    path: `/api/v1/templates/${await template()}/build`,
    body: {},
    ok: 202,
  }),
  "DELETE /api/v1/templates/:name": async () => ({ path: `/api/v1/templates/${await template()}`, ok: 200 }),
  "GET /api/v1/worker/artifacts/:id/:attempt/:name{.+}": async () => {
    const j = await job("running");
    return {
      path: `/api/v1/worker/artifacts/${j.id}/1/out.bin`,
      headers: claim,
      ok: 200,
      credential: j.credential,
    };
  },
  "PUT /api/v1/worker/artifacts/:id/:attempt/:name{.+}": async () => {
    const j = await job("running");
    return {
      path: `/api/v1/worker/artifacts/${j.id}/1/out.bin`,
      headers: claim,
      raw: CONTENT,
      ok: 201,
      credential: j.credential,
    };
  },
  "GET /api/v1/jobs/:id/artifacts": async () => ({ path: `/api/v1/jobs/${shipped}/artifacts`, ok: 200 }),
  "GET /api/v1/jobs/:id/artifacts/:name{.+}": async () => ({
    path: `/api/v1/jobs/${shipped}/artifacts/out.bin`,
    ok: 200,
  }),
  "POST /api/v1/releases": async () => ({
    path: "/api/v1/releases",
    body: { job: shipped, artifact: "out.bin", tag: `v${++n}` },
    ok: 201,
  }),
  "GET /api/v1/releases": async () => ({ path: "/api/v1/releases", ok: 200, projects: projectsOf }),
  "GET /api/v1/releases/:tag": async () => ({ path: `/api/v1/releases/${release}`, ok: 200 }),
  "GET /api/v1/audit": async () => ({ path: "/api/v1/audit", ok: 200 }),
  "GET /repos/:name": async () => ({ path: "/repos/ra", ok: 301 }),
  "GET /repos/:name/*": async () => ({
    path: "/repos/ra/",
    ok: 200,
    credential: (await job("running", "alpha", ["ra"])).credential,
  }),
  "GET /api/v1/repos": async () => ({ path: "/api/v1/repos", ok: 200, projects: projectsOf }),
  "POST /api/v1/repos": async () => ({
    path: "/api/v1/repos",
    body: { name: `r${++n}`, format: "deb", project: "alpha" },
    ok: 201,
  }),
  "GET /api/v1/repos/:name": async () => ({ path: "/api/v1/repos/ra", ok: 200 }),
  // Each repository signs its metadata with gpg (seconds): a fresh one only for a caller that may delete.
  "DELETE /api/v1/repos/:name": async (admitted) => ({
    path: `/api/v1/repos/${admitted ? await repo() : "ra"}`,
    ok: 200,
  }),
  "GET /api/v1/repos/:name/packages": async () => ({ path: "/api/v1/repos/ra/packages", ok: 200 }),
  "GET /api/v1/repos/:name/key": async () => ({ path: "/api/v1/repos/ra/key", ok: 200 }),
  // Past the guard, the key is read and refused as no key (400): the answer of an admitted caller.
  "PUT /api/v1/repos/:name/key": async () => ({ path: "/api/v1/repos/ra/key", raw: CONTENT, ok: 400 }),
  // A succeeded job without packages: past the guard and the checks, there is nothing to publish (422).
  "POST /api/v1/repos/:name/publish": async () => ({
    path: "/api/v1/repos/ra/publish",
    body: { job: shipped },
    ok: 422,
  }),
  "GET /api/v1/worker/jobs/:id/:attempt/repo-version": async () => {
    const j = await job("running");
    return {
      path: `/api/v1/worker/jobs/${j.id}/1/repo-version?repo=ra&pkg=kiln-hello`,
      ok: 200,
      credential: j.credential,
    };
  },
};

async function repo() {
  const name = `r${++n}`;
  await admin("POST", "/api/v1/repos", { name, format: "deb", project: "alpha" });
  return name;
}

async function offlineWorker() {
  const name = `off-${++n}`;
  await upsertWorker(master.ctx.store, {
    name,
    arch: "amd64",
    channels: ["default"],
    slots: [],
    version: "test",
  });
  return name;
}

async function recipe() {
  const name = `r${++n}`;
  await admin("POST", "/api/v1/recipes", { name, source: RECIPE });
  return name;
}

async function template() {
  const name = `t${++n}`;
  await admin("POST", "/api/v1/templates", { name, recipe: TEMPLATE });
  return name;
}

/** The secret each credential kind presents on a case (the job kinds depend on the case's job). */
function secretOf(c: Cred, k: Case): string | null {
  if (c.kind === "none") return null;
  if (c.kind === "own job") return k.credential ?? secrets["other job"]!;
  return secrets[c.name] ?? secrets[c.kind]!;
}

beforeAll(async () => {
  // Leases far longer than the test: a fixture's running job must not be re-queued under it.
  fixture = await startTestMaster("kiln-access-", { KILN_MASTER_LEASE: "1h", KILN_MASTER_HEARTBEAT: "1s" });
  master = fixture.master;
  app = createApp(master.ctx);
  const store = master.ctx.store;
  for (const c of CREDS) {
    if (c.kind === "role")
      secrets[c.name] = (await createToken(store, { role: c.role, name: c.name, project: c.project })).secret;
  }
  const revoked = await createToken(store, { role: "admin", name: "revoked" });
  await revokeToken(store, revoked.id);
  secrets.revoked = revoked.secret;
  secrets.expired = (
    await createToken(store, { role: "admin", name: "expired", ttlMs: 1000 }, Date.now() - 60_000)
  ).secret;
  secrets.worker = (await createToken(store, { role: "worker", name: "worker" })).secret;
  secrets["other job"] = (await job("running")).credential;
  secrets["ended job"] = (await job("succeeded")).credential;
  // A connected worker for the routes that talk to one (slot holds, template builds); it serves no
  // channel the fixtures use, so nothing is dispatched to it.
  master.ctx.registry.add({
    name: "w1",
    arch: "amd64",
    channels: ["none"],
    slots: new Map([["slot-0", { name: "slot-0", resources: [], held: null, job: null }]]),
    draining: false,
    holdReason: null,
    templates: [],
    send: () => {},
    ws: { close() {} } as unknown as ServerWebSocket<unknown>,
    instance: null,
    credential: "token:test",
  });
  await upsertWorker(store, { name: "w1", arch: "amd64", channels: ["none"], slots: [], version: "test" });
  shipped = await shippedJob();
  release = `v${++n}`;
  await admin("POST", "/api/v1/releases", { job: shipped, artifact: "out.bin", tag: release });
  // Something of project beta, so a list answer of beta's tokens has something to show.
  await job("queued", "beta");
  // Repository ra, private to project alpha, holding one package published from an alpha job.
  await admin("POST", "/api/v1/repos", { name: "ra", format: "deb", project: "alpha" });
  const deb = buildDeb({ control: controlText({ name: "kiln-hello", version: "1.0-1", arch: "amd64" }) });
  const built = await job("running");
  const put = await call(built.credential, "PUT", `/api/v1/worker/artifacts/${built.id}/1/kiln-hello.deb`, {
    raw: deb,
    headers: {
      "x-kiln-sha256": new Bun.CryptoHasher("sha256").update(deb).digest("hex"),
      "x-kiln-size": String(deb.length),
    },
  });
  if (put.status !== 201) throw new Error(`upload of the package: ${put.status}`);
  await finishJob(master.ctx.store, built.id, 1, OUTCOME, 0);
  await admin("POST", "/api/v1/repos/ra/publish", { job: built.id });
});

afterAll(() => fixture.stop());

describe("the route table", () => {
  test("every route has a declared rule and a fixture to call it with", () => {
    const rows = routeTable(app);
    expect(rows.length).toBeGreaterThan(40);
    const problems = rows
      .filter((r) => !r.outside)
      .flatMap((r) => {
        const key = `${r.method} ${r.path}`;
        const out: string[] = [];
        if (!r.access) out.push(`${key} has no rule: give it guard({...})`);
        if (!FIXTURES[key]) out.push(`${key} has no fixture in access.test.ts`);
        return out;
      });
    expect(problems).toEqual([]);
    const served = new Set(rows.map((r) => `${r.method} ${r.path}`));
    expect(Object.keys(FIXTURES).filter((k) => !served.has(k))).toEqual([]);
    expect(rows.find((r) => r.path === WORKER_SOCKET)?.access).toEqual({ who: "worker" });
    // Enrollment is served before the app, with TLS only, and checks its own credentials (a join token, a
    // worker certificate with proof of its key): src/tls/enroll.test.ts tries them over real mutual TLS.
    expect(rows.filter((r) => r.outside === "tls").map((r) => [r.path, r.access?.who])).toEqual([
      ["/api/v1/tls/ca", "anyone"],
      ["/api/v1/tls/enroll", "join-token"],
      ["/api/v1/tls/renew", "worker-certificate"],
    ]);
  });

  test("a route registered without a guard is listed with no rule, which the test above refuses", () => {
    const extra = createApp(master.ctx);
    extra.get("/api/v1/unguarded", (c) => c.text("anyone at all"));
    const row = routeTable(extra).find((r) => r.path === "/api/v1/unguarded");
    expect(row).toEqual({ method: "GET", path: "/api/v1/unguarded", access: null });
  });
});

/** docs/access.md: the rules in words, then every route with its rule, from the route table. */
function renderAccessDoc(rows: ReturnType<typeof routeTable>): string {
  const who = (a: Access) => {
    switch (a.who) {
      case "anyone":
        return "anyone, no credential needed";
      case "worker":
        return "a worker token";
      case "job":
        return "the credential of the job in the path, while its attempt runs";
      case "repo-reader":
        return "anyone for a public repository; else a token that may read it (Bearer, or Basic with the token as password); a job's credential only for the repositories its job uses";
      case "join-token":
        return "a join token (TLS enrollment, checked before the app)";
      case "worker-certificate":
        return "a worker certificate with proof of its key (TLS, checked before the app)";
      case "client":
        return `${a.role}${a.workers ? ", or a worker token" : ""}`;
    }
  };
  const scope = (a: Access) => (a.who === "client" ? a.scope : "");
  const lines = [
    "# Who may call what",
    "",
    "<!-- Generated from the master's route table by src/master/access.test.ts; do not edit. Run",
    "     `KILN_WRITE_DOCS=1 bun test src/master/access.test.ts` after changing a route's rule. -->",
    "",
    "Every route of the master declares who may call it, and that declaration is what its guard enforces",
    "(src/master/access.ts). A test tries every route below with every kind of credential (none, each role,",
    "a token of another project, a revoked and an expired token, a worker token, a job's own credential and",
    "another job's) and checks each answer against the route's rule.",
    "",
    "**Credentials.** API tokens (`kiln token create --role R [--project P] [--ttl D]`, `ls`, `revoke`) have",
    "a role: `admin` > `operator` > `submitter` > `viewer`, each allowed what the ones below it are; and",
    "`worker`, which only connects workers. The worker websocket takes a worker token (on a TLS master, the",
    "worker's certificate, docs/tls.md) and nothing else, the admin token included; a worker reaches no",
    "client route but the artifact downloads that template builds need. A job's credential is minted by the",
    "master for each attempt it assigns, sent to the worker with the assignment, and valid only for that",
    "job's uploads, `kiln job version` and the files of the repositories it uses, and only while that attempt is assigned or running. An unknown, revoked or expired credential gets 401; one whose role or kind does not fit, 403.",
    "Revoking a token (or its expiry) also closes what it holds open: a worker's websocket, a followed log.",
    "",
    "**Projects.** A token may be limited to one project (`--project`; not an admin or worker token). Such a",
    "token gets 404 for another project's job or release (as if it did not exist), 403 for a submit to",
    "another project, only its own project's entries in lists, and 403 for anything that changes (or, for",
    "the audit log and tokens, reads) what every project shares: workers, tokens, templates, recipes.",
    "The files of a release (`/releases/TAG/...`) are public downloads. A package repository belongs to a",
    "project or to none; its files (`/repos/NAME/...`) are read by anyone when it is public, else with a",
    "token that may read it, given as Bearer or as the password of Basic auth (apt's auth.conf, dnf). A",
    "job's credential reads the repositories its job names with `kiln submit --use-repo` (or its recipe's",
    "`use_repos`), through the job's API proxy, and no other one, public or not.",
    "",
    "| scope | a token of another project gets |",
    "|---|---|",
    "| shared | the same as any token: the target belongs to no project |",
    "| global | 403: it concerns every project, so it needs a token without a project |",
    "| job | 404 for a job of another project (the path's `:id`) |",
    "| release | 404 for a release of another project (the path's `:tag`) |",
    "| repo | 404 for a repository it may not read (another project's, unless public); a change to one that is not its own project's, 403 |",
    "| body-project | 403 when the body names another project (a submit, a new repository) |",
    "| body-job | 404 when the body names a job of another project |",
    "| list | 200, with only its own project's entries |",
    "",
    "**Secrets.** Token secrets are shown once, by `kiln token create`, and stored only as hashes; `kiln",
    "submit --secret NAME[=VALUE]` values reach only their job's environment (and a retry's), through its",
    "assignment; a job's credential stays with its worker. None of them is written to Kiln's logs, the audit",
    "log, `kiln show` or any API view of a job (which names a job's secrets, never their values), and no",
    "other sandboxed job can read them: Kiln's data dirs are masked in the sandbox and private to their",
    "owner. (The plain-process runner, for machines without root, isolates nothing: its jobs run as the",
    "worker's user.) A job that prints its own secret puts it in its own log, as in any build system.",
    "",
    "**Audit.** Every change a caller makes (submit, cancel, retry, rebuild, worker drain/hold/release/rm,",
    "slot holds, token create/revoke, template and recipe changes, repository add/rm/key/publish,",
    "promotions) is recorded with the token's id, name and",
    "role: `kiln audit [--since 1h|TIME] [--limit N] [--json]`, or `GET /api/v1/audit` (admin; pages newest",
    "first by id cursor, `before` and `since`).",
    "",
    "| method | path | who may call | scope |",
    "|---|---|---|---|",
    ...rows.map(
      (r) =>
        `| ${r.method} | \`${r.path}\` | ${r.access ? who(r.access) : "NO RULE"} | ${r.access ? scope(r.access) : ""} |`,
    ),
  ];
  return `${lines.join("\n")}\n`;
}

describe("what the table is shown as", () => {
  test("docs/access.md is generated from the route table", () => {
    const doc = join(import.meta.dir, "..", "..", "docs", "access.md");
    const want = renderAccessDoc(routeTable(app));
    if (process.env.KILN_WRITE_DOCS) writeFileSync(doc, want);
    let have = "";
    try {
      have = readFileSync(doc, "utf8");
    } catch {
      // Missing: the comparison says how to make it.
    }
    expect(
      have === want,
      "docs/access.md is stale: run `KILN_WRITE_DOCS=1 bun test src/master/access.test.ts`",
    ).toBe(true);
  });

  test("the OpenAPI document lists every API route with its method", () => {
    const paths = OPENAPI.paths as Record<string, Record<string, unknown>>;
    const missing = routeTable(app)
      .filter((r) => r.path.startsWith("/api/v1/") && !r.outside && r.path !== "/api/v1/openapi.json")
      .map((r) => [r.method.toLowerCase(), r.path.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}")] as const)
      .filter(([method, path]) => !paths[path]?.[method])
      .map(([method, path]) => `${method} ${path}`);
    expect(missing).toEqual([]);
  });
});

describe("every route with every credential", () => {
  // The table is read from an app built the same way as the one the cases run against.
  const rows = routeTable().filter((r) => !r.outside && r.access);
  for (const row of rows) {
    test(`${row.method} ${row.path} (${describeAccess(row.access!)}) answers each credential as its rule says`, async () => {
      const got: string[] = [];
      const want: string[] = [];
      for (const cred of CREDS) {
        const e = expected(row.access!, cred);
        const k = await FIXTURES[`${row.method} ${row.path}`]!(e === "ok");
        const res = await call(secretOf(cred, k), row.method, k.path, k);
        const status = e === "ok" ? k.ok : e;
        want.push(`${cred.name}: ${status}`);
        got.push(`${cred.name}: ${res.status}${res.status === status ? "" : ` ${json(res.body)}`}`);
        if (res.status === k.ok && k.projects && cred.kind === "role") {
          const seen = new Set(k.projects(res.body));
          if (cred.project)
            expect([cred.name, [...seen].filter((p) => p !== cred.project)]).toEqual([cred.name, []]);
          else expect([cred.name, seen.has("alpha")]).toEqual([cred.name, true]);
        }
      }
      expect(got).toEqual(want);
    });
  }

  test("the worker websocket answers each credential as its rule says, on a real server", async () => {
    const url = `${master.url}${WORKER_SOCKET}`;
    const rule: Access = { who: "worker" };
    const got: string[] = [];
    const want: string[] = [];
    for (const cred of CREDS) {
      const secret = secretOf(cred, { path: "", ok: 426, credential: secrets["other job"] });
      const headers: Record<string, string> = secret ? { authorization: `Bearer ${secret}` } : {};
      // A plain request gets as far as the upgrade: 426 says the credential was admitted.
      const plain = await fetch(url, { headers });
      const e = expected(rule, cred);
      want.push(`${cred.name}: ${e === "ok" ? 426 : e}`);
      got.push(`${cred.name}: ${plain.status}`);
      const ws = new WebSocket(url.replace("http", "ws"), { headers } as unknown as string[]);
      const opened = await new Promise<boolean>((resolve) => {
        ws.onopen = () => resolve(true);
        ws.onerror = () => resolve(false);
      });
      ws.close();
      want.push(`${cred.name} opens: ${e === "ok"}`);
      got.push(`${cred.name} opens: ${opened}`);
    }
    expect(got).toEqual(want);
  });
});

/** Opens a worker socket with `secret`; resolves once it is open, with a promise of how it closes. */
async function workerSocket(secret: string) {
  const ws = new WebSocket(`${master.url.replace("http", "ws")}${WORKER_SOCKET}`, {
    headers: { authorization: `Bearer ${secret}` },
  } as unknown as string[]);
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
  });
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("the websocket did not open"));
  });
  return { ws, closed };
}

describe("revocation and expiry reach open connections", () => {
  test("revoking a worker token closes the socket it opened, and it cannot connect again", async () => {
    const t = await createToken(master.ctx.store, { role: "worker", name: "soon-revoked" });
    const { closed } = await workerSocket(t.secret);
    const res = await admin("DELETE", `/api/v1/admin/tokens/${t.id}`);
    expect(res).toEqual({ id: t.id, revoked: true, closed: 1 });
    expect(await closed).toEqual({ code: 4401, reason: "the token was revoked" });
    const again = await fetch(`${master.url}${WORKER_SOCKET}`, {
      headers: { authorization: `Bearer ${t.secret}` },
    });
    expect(again.status).toBe(401);
  });

  test("a worker socket closes when its token expires", async () => {
    const t = await createToken(master.ctx.store, { role: "worker", name: "short", ttlMs: 1500 });
    const { closed } = await workerSocket(t.secret);
    expect(await closed).toEqual({ code: 4401, reason: "the token expired" });
  });

  test("revoking a client's token ends the log it follows; the token gets 401 after", async () => {
    const j = await job("running");
    master.ctx.logs.append(j.id, "first line\n");
    const t = await createToken(master.ctx.store, { role: "viewer", name: "follower" });
    const res = await fetch(`${master.url}/api/v1/jobs/${j.id}/log?follow=1`, {
      headers: { authorization: `Bearer ${t.secret}` },
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe("first line\n");
    await waitFor("the follow to be registered", () => master.ctx.sessions.size() > 0);
    await admin("DELETE", `/api/v1/admin/tokens/${t.id}`);
    // The job is still running: the stream ends only because the token went.
    let rest = await reader.read();
    while (!rest.done) rest = await reader.read();
    const after = await fetch(`${master.url}/api/v1/jobs/${j.id}/log`, {
      headers: { authorization: `Bearer ${t.secret}` },
    });
    expect(after.status).toBe(401);
  });
});

describe("a job's credential", () => {
  test("is valid for its own job only, and only while its attempt is assigned or running", async () => {
    const a = await job("running");
    const b = await job("running");
    const put = (secret: string, id: number, attempt = 1) =>
      call(secret, "PUT", `/api/v1/worker/artifacts/${id}/${attempt}/x.bin`, {
        raw: CONTENT,
        headers: claim,
      });
    expect((await put(a.credential, b.id)).status).toBe(403);
    expect((await call(a.credential, "GET", `/api/v1/jobs/${a.id}`)).status).toBe(403);
    // The attempt is lost and the job re-queued, then assigned again: the old credential is dead, the
    // new one works.
    const before = (await getJob(master.ctx.store.db, a.id))!;
    await requeueOrLose(master.ctx.store, { ...before, retries: 1 }, "test", 0);
    const fresh = newJobCredential(a.id);
    await assignJob(master.ctx.store, a.id, "w1", "slot-0", 3_600_000, Date.now(), fresh.hash);
    const old = await put(a.credential, a.id, 2);
    expect([old.status, (old.body as { error: { code: string } }).error.code]).toEqual([
      401,
      "JOB_CREDENTIAL_EXPIRED",
    ]);
    expect((await put(fresh.secret, a.id, 2)).status).toBe(201);
    await finishJob(master.ctx.store, a.id, 2, OUTCOME, 0);
    expect((await put(fresh.secret, a.id, 2)).status).toBe(401);
  });
});

describe("a job's credential and package repositories", () => {
  test("reaches only the repositories its job named, whatever path or name leads elsewhere", async () => {
    // rb: public, of no project; rc: private to project beta. The job names ra only.
    await admin("POST", "/api/v1/repos", { name: "rb", format: "deb", public: true });
    await admin("POST", "/api/v1/repos", { name: "rc", format: "deb", project: "beta" });
    const a = await job("running", "alpha", ["ra"]);
    const get = async (path: string, secret = a.credential) => (await call(secret, "GET", path)).status;
    expect(await get("/repos/ra/dists/stable/InRelease")).toBe(200);
    expect(await get("/repos/ra/key.asc")).toBe(200);
    // Another repository, public or another project's, is no repository for it.
    expect(await get("/repos/rb/dists/stable/InRelease")).toBe(404);
    expect(await get("/repos/rc/dists/stable/InRelease")).toBe(404);
    // Anyone reads a public repository: without the credential, rb is there.
    expect(await get("/repos/rb/dists/stable/InRelease", "")).toBe(200);
    // Climbing out of ra's path into another repository's: a URL resolves "../" (and "%2e%2e/") before
    // any route sees it, so that is a request for rb; an encoded "/" stays inside one part, refused.
    expect(await get("/repos/ra/%2e%2e/rb/dists/stable/InRelease")).toBe(404);
    expect(await get("/repos/ra/../rb/key.asc")).toBe(404);
    expect(await get("/repos/ra/dists/..%2f..%2f..%2frb%2fkey.asc")).toBe(400);
    // A name with ".." is no name.
    expect(await get("/repos/ra..rb/key.asc")).toBe(404);
    // A job of project beta that names ra (it could not be submitted so) still cannot read it.
    const beta = await job("running", "beta", ["ra", "rc"]);
    expect(await get("/repos/ra/key.asc", beta.credential)).toBe(404);
    expect(await get("/repos/rc/key.asc", beta.credential)).toBe(200);
    // Another running job's credential does not borrow a's list; an ended job's reads nothing.
    const other = await job("running", "alpha");
    expect(await get("/repos/ra/key.asc", other.credential)).toBe(404);
    const ended = await job("succeeded", "alpha", ["ra"]);
    expect(await get("/repos/ra/key.asc", ended.credential)).toBe(401);
  });
});

describe("project-limited tokens", () => {
  test("the workers list shows a slot busy with another project's job without its id", async () => {
    const mine = await job("running", "beta");
    const theirs = await job("running", "alpha");
    master.ctx.registry.add({
      name: "w2",
      arch: "amd64",
      channels: ["none"],
      slots: new Map([
        ["a", { name: "a", resources: [], held: null, job: `${theirs.id}:1` }],
        ["b", { name: "b", resources: [], held: null, job: `${mine.id}:1` }],
      ]),
      draining: false,
      holdReason: null,
      templates: [],
      send: () => {},
      ws: { close() {} } as unknown as ServerWebSocket<unknown>,
      instance: null,
      credential: "token:test",
    });
    await upsertWorker(master.ctx.store, {
      name: "w2",
      arch: "amd64",
      channels: ["none"],
      slots: [],
      version: "t",
    });
    type W = { name: string; busy: number; slots: { name: string; job: number | null }[] };
    const beta = (await call(secrets["viewer of project beta"]!, "GET", "/api/v1/workers")).body as W[];
    const w2 = beta.find((w) => w.name === "w2")!;
    expect([w2.busy, w2.slots.map((s) => s.job)]).toEqual([2, [null, mine.id]]);
    const all = (await call(secrets.viewer!, "GET", "/api/v1/workers")).body as W[];
    expect(all.find((w) => w.name === "w2")!.slots.map((s) => s.job)).toEqual([theirs.id, mine.id]);
  });

  test("admin and worker tokens cannot be limited to a project", async () => {
    for (const role of ["admin", "worker"]) {
      const r = await call(secrets.admin!, "POST", "/api/v1/admin/tokens", {
        body: { role, project: "alpha" },
      });
      expect(r.status).toBe(400);
    }
  });
});

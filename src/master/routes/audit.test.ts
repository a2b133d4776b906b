import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ServerWebSocket } from "bun";
import { asc, desc, gte, lt } from "drizzle-orm";
import { appendAudit, listAudit } from "../../store/audit.ts";
import { assignJob, finishJob, insertJob, markRunning } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { auditLog } from "../../store/schema.ts";
import { testJob } from "../../store/test-job.ts";
import { createToken } from "../../store/tokens.ts";
import { upsertWorker } from "../../store/workers.ts";
import { createApp } from "../app.ts";
import type { MasterContext } from "../context.ts";
import { newJobCredential } from "../job-credential.ts";
import { testContext } from "../test-context.ts";

/*
 * The audit log in process against a real store: every change a caller makes is recorded once with who
 * did it, nothing secret is written, and pages are read by an indexed cursor.
 */

let dir: string;
let store: Store;
let ctx: MasterContext;
let app: ReturnType<typeof createApp>;
let admin = "";
let ops = "";

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-audit-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  ctx = testContext(dir, store);
  app = createApp(ctx);
  admin = (await createToken(store, { role: "admin", name: "root" })).secret;
  ops = (await createToken(store, { role: "operator", name: "ops-bot" })).secret;
});
afterEach(async () => {
  await ctx.repos.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

// biome-ignore lint/suspicious/noExplicitAny: response bodies are checked by the assertions that read them.
type Json = any;

async function call(secret: string, method: string, path: string, body?: unknown, raw?: Uint8Array) {
  const res = await app.request(`/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

async function ok(secret: string, method: string, path: string, body?: unknown) {
  const r = await call(secret, method, path, body);
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

describe("what is recorded", () => {
  test("every change a caller makes is recorded once, with the token that made it, newest first", async () => {
    ctx.registry.add({
      name: "w1",
      arch: "amd64",
      channels: ["none"],
      slots: new Map([["s0", { name: "s0", resources: [], held: null, job: null }]]),
      draining: false,
      holdReason: null,
      templates: [],
      send: () => {},
      ws: {} as ServerWebSocket<unknown>,
      instance: null,
      credential: "token:test",
    });
    await upsertWorker(store, { name: "w1", arch: "amd64", channels: ["none"], slots: [], version: "t" });
    await upsertWorker(store, { name: "gone", arch: "amd64", channels: ["none"], slots: [], version: "t" });

    const { id: job } = await ok(admin, "POST", "/jobs", { command: ["true"], channel: "none" });
    await ok(ops, "POST", `/jobs/${job}/cancel`);
    const { id: copy } = await ok(admin, "POST", `/jobs/${job}/retry`);
    await ok(ops, "POST", "/admin/workers/w1/drain");
    await ok(ops, "POST", "/admin/workers/w1/hold", { reason: "disk smells" });
    await ok(ops, "POST", "/admin/workers/w1/release");
    await ok(ops, "POST", "/admin/workers/w1/slots/s0/hold", { reason: "bad gpu" });
    await ok(ops, "POST", "/admin/workers/w1/slots/s0/release");
    await ok(ops, "DELETE", "/admin/workers/gone");
    const made = await ok(admin, "POST", "/admin/tokens", { role: "viewer", name: "ci", ttl: "1h" });
    await ok(admin, "DELETE", `/admin/tokens/${made.id}`);
    const recipe = 'description = "r"\nscript = "true"\n';
    await ok(ops, "POST", "/recipes", { name: "r1", source: recipe });
    await ok(ops, "DELETE", "/recipes/r1");
    const tpl = {
      kind: "debootstrap",
      suite: "bookworm",
      mirror: "http://deb.debian.org/debian",
      variant: "minbase",
      include: [],
      packages: [],
    };
    await ok(ops, "POST", "/templates", { name: "t1", recipe: tpl });
    await ok(ops, "POST", "/templates/t1/build", {});
    await ok(ops, "DELETE", "/templates/t1");
    // A succeeded job with an artifact, uploaded with the job's own credential, promoted by the admin.
    const row = await insertJob(
      store,
      testJob({
        name: "ship",
        channel: "none",
      }),
    );
    const cred = newJobCredential(row.id);
    await assignJob(store, row.id, "w1", "s0", 60_000, Date.now(), cred.hash);
    await markRunning(store, row.id, 1, "w1", 60_000);
    const bytes = new TextEncoder().encode("x");
    const put = await app.request(`/api/v1/worker/artifacts/${row.id}/1/a.bin`, {
      method: "PUT",
      headers: {
        authorization: `Bearer ${cred.secret}`,
        "x-kiln-sha256": new Bun.CryptoHasher("sha256").update(bytes).digest("hex"),
        "x-kiln-size": "1",
      },
      body: bytes,
    });
    expect(put.status).toBe(201);
    await finishJob(
      store,
      row.id,
      1,
      { state: "succeeded", reason: null, exitCode: 0, message: null, peakMemoryBytes: null, cpuMs: null },
      0,
    );
    await ok(admin, "POST", "/releases", { job: row.id, artifact: "a.bin", tag: "v1" });
    const { id: rebuilt } = await ok(ops, "POST", `/jobs/${row.id}/rebuild`);

    const { entries, next } = await ok(admin, "GET", "/audit");
    expect(next).toBeNull();
    const seen = entries.map((e: Json) => [e.action, e.target, e.tokenName, e.role]).reverse();
    expect(seen).toEqual([
      ["job.submit", `job/${job}`, "root", "admin"],
      ["job.cancel", `job/${job}`, "ops-bot", "operator"],
      ["job.retry", `job/${copy}`, "root", "admin"],
      ["worker.drain", "worker/w1", "ops-bot", "operator"],
      ["worker.hold", "worker/w1", "ops-bot", "operator"],
      ["worker.release", "worker/w1", "ops-bot", "operator"],
      ["slot.hold", "worker/w1/slot/s0", "ops-bot", "operator"],
      ["slot.release", "worker/w1/slot/s0", "ops-bot", "operator"],
      ["worker.rm", "worker/gone", "ops-bot", "operator"],
      ["token.create", `token/${made.id}`, "root", "admin"],
      ["token.revoke", `token/${made.id}`, "root", "admin"],
      ["recipe.add", "recipe/r1", "ops-bot", "operator"],
      ["recipe.rm", "recipe/r1", "ops-bot", "operator"],
      ["template.add", "template/t1", "ops-bot", "operator"],
      ["template.build", "template/t1", "ops-bot", "operator"],
      ["template.rm", "template/t1", "ops-bot", "operator"],
      ["release.promote", "release/v1", "root", "admin"],
      ["job.rebuild", `job/${rebuilt}`, "ops-bot", "operator"],
    ]);
    const byAction = Object.fromEntries(entries.map((e: Json) => [e.action, e]));
    expect(byAction["worker.hold"].detail).toEqual({ reason: "disk smells" });
    expect(byAction["job.retry"].detail).toEqual({ project: "default", retryOf: job });
    expect(byAction["token.create"].detail).toEqual({ name: "ci", role: "viewer", project: null, ttl: "1h" });
    expect(Date.parse(entries[0].at)).toBeGreaterThan(0);
  });

  test("repository changes are recorded: add and remove", async () => {
    await ok(ops, "POST", "/repos", { name: "tools", format: "deb" });
    await ok(ops, "DELETE", "/repos/tools");
    const { entries } = await ok(admin, "GET", "/audit");
    expect(entries.map((e: Json) => [e.action, e.target, e.tokenName]).reverse()).toEqual([
      ["repo.add", "repo/tools", "ops-bot"],
      ["repo.rm", "repo/tools", "ops-bot"],
    ]);
  });

  test("no secret is written: not a token's, not a job's --secret values, not a job credential", async () => {
    const made = await ok(admin, "POST", "/admin/tokens", { role: "submitter", name: "ci" });
    const { id } = await ok(made.token, "POST", "/jobs", {
      command: ["true"],
      channel: "none",
      secrets: { DEPLOY_KEY: "hunter2-deploy-key" },
    });
    const all = JSON.stringify((await store.client.execute("SELECT * FROM audit_log")).rows);
    expect(all).toContain(`job/${id}`);
    expect(all).toContain("DEPLOY_KEY");
    for (const secret of [made.token, "hunter2-deploy-key", admin]) expect(all).not.toContain(secret);
  });

  test("a refused change records nothing", async () => {
    const viewer = (await createToken(store, { role: "viewer", name: "v" })).secret;
    expect((await call(viewer, "POST", "/jobs", { command: ["true"] })).status).toBe(403);
    expect((await call(ops, "POST", "/admin/workers/nobody/drain")).status).toBe(404);
    expect((await ok(admin, "GET", "/audit")).entries).toEqual([]);
  });
});

describe("reading it", () => {
  const fill = async (count: number, at: (i: number) => number) => {
    for (let i = 0; i < count; i++) {
      await appendAudit(store, {
        at: at(i),
        tokenId: "t",
        tokenName: "n",
        role: "admin",
        action: "job.submit",
        target: `job/${i + 1}`,
        detail: null,
      });
    }
  };

  test("pages follow the cursor newest first, each entry exactly once", async () => {
    await fill(250, (i) => 1_000_000 + i);
    const ids: number[] = [];
    let before: number | null = null;
    for (;;) {
      const q: string = before === null ? "?limit=100" : `?limit=100&before=${before}`;
      const page = await ok(admin, "GET", `/audit${q}`);
      ids.push(...page.entries.map((e: Json) => e.id));
      if (page.next === null) break;
      before = page.next;
    }
    expect(ids.length).toBe(250);
    expect(ids).toEqual([...ids].sort((a, b) => b - a));
    expect(new Set(ids).size).toBe(250);
  });

  test("since keeps the entries recorded at or after a time, given as ISO 8601 or epoch ms", async () => {
    await fill(10, (i) => Date.parse("2030-01-01T00:00:00Z") + i * 60_000);
    const iso = await ok(admin, "GET", "/audit?since=2030-01-01T00:05:00Z");
    expect(iso.entries.map((e: Json) => e.target)).toEqual(["job/10", "job/9", "job/8", "job/7", "job/6"]);
    const ms = await ok(admin, "GET", `/audit?since=${Date.parse("2030-01-01T00:08:00Z")}&limit=1`);
    expect([ms.entries.map((e: Json) => e.target), ms.next]).toEqual([["job/10"], 10]);
    const bad = await call(admin, "GET", "/audit?since=yesterday-ish");
    expect([bad.status, bad.body.error.code]).toEqual([400, "BAD_REQUEST"]);
    expect((await call(admin, "GET", "/audit?limit=0")).status).toBe(400);
    expect((await listAudit(store.db, { limit: 5, since: Date.parse("2031-01-01T00:00:00Z") })).length).toBe(
      0,
    );
  });

  test("both reads are index range scans, so a page costs the same however large the table grows", async () => {
    const plan = async (q: { toSQL(): { sql: string; params: unknown[] } }) => {
      const { sql, params } = q.toSQL();
      const rows = await store.client.execute({ sql: `EXPLAIN QUERY PLAN ${sql}`, args: params as never });
      return rows.rows.map((r) => String(r.detail)).join("; ");
    };
    // The same two queries listAudit makes: the first id since a time, then a page below a cursor.
    const first = await plan(
      store.db
        .select({ id: auditLog.id })
        .from(auditLog)
        .where(gte(auditLog.at, 5))
        .orderBy(asc(auditLog.at))
        .limit(1),
    );
    expect(first).toContain("USING COVERING INDEX audit_log_at");
    const page = await plan(
      store.db.select().from(auditLog).where(lt(auditLog.id, 5)).orderBy(desc(auditLog.id)).limit(100),
    );
    expect(page).toMatch(/SEARCH audit_log USING INTEGER PRIMARY KEY \(rowid<\?\)/);
    expect(page).not.toContain("TEMP B-TREE");
  });
});

import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { eq } from "drizzle-orm";
import { putArtifact } from "../../store/artifacts.ts";
import { assignJob, finishJob, getJob, markRunning } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { insertRepo } from "../../store/repos.ts";
import { jobs } from "../../store/schema.ts";
import { putTemplate } from "../../store/templates.ts";
import { createToken, type Role } from "../../store/tokens.ts";
import { createApp } from "../app.ts";
import type { MasterContext } from "../context.ts";
import type { LiveWorker } from "../registry.ts";
import { testContext } from "../test-context.ts";

/*
 * The client routes (submit, list, show, log, events, cancel, retry) in process against a real store:
 * who may do what, what bad input gets, and that a token limited to a project sees nothing else.
 */

let dir: string;
let store: Store;
let ctx: MasterContext;
let app: ReturnType<typeof createApp>;
const tokens: Record<string, string> = {};

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-t-client-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  ctx = testContext(dir, store);
  app = createApp(ctx);
  for (const role of ["admin", "operator", "submitter", "viewer", "worker"] as Role[])
    tokens[role] = (await createToken(store, { role, name: role })).secret;
  tokens.scoped = (await createToken(store, { role: "submitter", name: "scoped", project: "alpha" })).secret;
  tokens.scopedViewer = (await createToken(store, { role: "viewer", name: "sv", project: "alpha" })).secret;
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
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: Json = {};
  try {
    json = JSON.parse(text);
  } catch {
    json = { text };
  }
  return { status: res.status, body: json };
}

/** The status and error code of a refusal, side by side, so a failure shows both. */
const refusal = (r: { status: number; body: Json }) => [r.status, r.body.error?.code];

async function submit(who = "submitter", body: Json = { command: ["echo", "hi"] }): Promise<number> {
  const r = await call(who, "POST", "/jobs", body);
  expect(r.status).toBe(201);
  return r.body.id;
}

describe("who may call", () => {
  test("no token, a malformed header, or an unknown token gets 401 and names what to do", async () => {
    expect(refusal(await call(null, "GET", "/jobs"))).toEqual([401, "UNAUTHENTICATED"]);
    const basic = await app.request("/api/v1/jobs", { headers: { authorization: "Basic Zm9vOmJhcg==" } });
    expect(basic.status).toBe(401);
    const unknown = await call("kiln_not-a-token", "GET", "/jobs");
    expect(refusal(unknown)).toEqual([401, "UNAUTHENTICATED"]);
    expect(unknown.body.error.message).toContain("ask an admin for a new one");
  });

  test("a revoked or expired token is refused", async () => {
    const expired = await createToken(store, { role: "viewer", name: "old", ttlMs: 1 }, Date.now() - 60_000);
    expect(refusal(await call(expired.secret, "GET", "/jobs"))).toEqual([401, "UNAUTHENTICATED"]);
    const revoked = await createToken(store, { role: "viewer", name: "gone" });
    expect((await call("admin", "DELETE", `/admin/tokens/${revoked.id}`)).status).toBe(200);
    expect(refusal(await call(revoked.secret, "GET", "/jobs"))).toEqual([401, "UNAUTHENTICATED"]);
  });

  test("viewers and workers cannot submit, cancel or retry; submitters can", async () => {
    for (const who of ["viewer", "worker"]) {
      expect(refusal(await call(who, "POST", "/jobs", { command: ["true"] }))).toEqual([403, "FORBIDDEN"]);
    }
    const id = await submit();
    for (const who of ["viewer", "worker"]) {
      expect(refusal(await call(who, "POST", `/jobs/${id}/cancel`))).toEqual([403, "FORBIDDEN"]);
      expect(refusal(await call(who, "POST", `/jobs/${id}/retry`))).toEqual([403, "FORBIDDEN"]);
    }
    // A worker token reads nothing of the client API either.
    expect(refusal(await call("worker", "GET", "/jobs"))).toEqual([403, "FORBIDDEN"]);
    expect((await call("viewer", "GET", `/jobs/${id}`)).body.state).toBe("queued");
  });
});

describe("submit", () => {
  test("a job is queued with the submitter's name and the master's defaults, and a pass is asked for", async () => {
    let asked = 0;
    ctx.dispatch = () => {
      asked++;
    };
    const id = await submit();
    expect(asked).toBe(1);
    const row = (await getJob(store.db, id))!;
    expect([row.state, row.command, row.submittedBy, row.timeoutMs, row.retries]).toEqual([
      "queued",
      ["echo", "hi"],
      "submitter",
      60_000,
      2,
    ]);
  });

  test("a body that is not JSON, or a field with a bad value, is refused with 400 naming the field", async () => {
    expect(refusal(await call("submitter", "POST", "/jobs", "{not json"))).toEqual([400, "BAD_REQUEST"]);
    const empty = await call("submitter", "POST", "/jobs", { command: [] });
    expect(refusal(empty)).toEqual([400, "INVALID_REQUEST"]);
    expect(empty.body.error.message).toMatch(/^command/);
    const unknown = await call("submitter", "POST", "/jobs", { command: ["true"], colour: "red" });
    expect(refusal(unknown)).toEqual([400, "INVALID_REQUEST"]);
    const negative = await call("submitter", "POST", "/jobs", { command: ["true"], priority: "high" });
    expect(refusal(negative)).toEqual([400, "INVALID_REQUEST"]);
    expect(negative.body.error.message).toMatch(/^priority/);
    // Nothing refused was queued.
    expect((await call("viewer", "GET", "/jobs")).body).toEqual([]);
  });

  test("a token limited to a project submits into it, and is refused another project", async () => {
    const id = await submit("scoped");
    expect((await getJob(store.db, id))!.project).toBe("alpha");
    const other = await call("scoped", "POST", "/jobs", { command: ["true"], project: "beta" });
    expect(refusal(other)).toEqual([403, "FORBIDDEN"]);
    expect(other.body.error.message).toContain("limited to project alpha");
  });
});

describe("submit --use-repo", () => {
  const repo = (name: string, project: string | null, isPublic = false) =>
    insertRepo(store, {
      name,
      format: "deb",
      project,
      public: isPublic,
      dist: "stable",
      component: "main",
      archs: ["amd64"],
      keep: 3,
      keyFingerprint: null,
      createdAt: Date.now(),
      createdBy: "test",
    });

  test("a repository that does not exist, or another project's private one, is refused with 400 naming it", async () => {
    await repo("mine", "alpha");
    await repo("theirs", "beta");
    await repo("shared", "beta", true);
    const missing = await call("scoped", "POST", "/jobs", { command: ["true"], useRepos: ["nosuch"] });
    expect(refusal(missing)).toEqual([400, "REPO_NOT_FOUND"]);
    expect(missing.body.error.message).toContain("--use-repo nosuch: no repository nosuch");
    // Project beta's private repository: refused to alpha's token and to an unscoped submit into alpha,
    // in the same words as one that does not exist.
    for (const who of ["scoped", "submitter"]) {
      const theirs = await call(who, "POST", "/jobs", {
        command: ["true"],
        project: "alpha",
        useRepos: ["mine", "theirs"],
      });
      expect(refusal(theirs)).toEqual([400, "REPO_NOT_FOUND"]);
      expect(theirs.body.error.message).toContain(
        "--use-repo theirs: no repository theirs that jobs of project alpha may read",
      );
    }
    // A name that could climb or hide is no name.
    for (const bad of ["..", "a/../b", "../theirs", "Mine", "mine/"]) {
      const r = await call("scoped", "POST", "/jobs", { command: ["true"], useRepos: [bad] });
      expect([bad, ...refusal(r)]).toEqual([bad, 400, "INVALID_NAME"]);
    }
    const many = Array.from({ length: 17 }, (_, i) => `r${i}`);
    expect(refusal(await call("scoped", "POST", "/jobs", { command: ["true"], useRepos: many }))).toEqual([
      400,
      "INVALID_REQUEST",
    ]);
    // Nothing refused was queued.
    expect((await call("viewer", "GET", "/jobs")).body).toEqual([]);
  });

  test("its own project's repositories and public ones are kept on the job, once each, shown and copied by a retry", async () => {
    await repo("mine", "alpha");
    await repo("shared", "beta", true);
    await repo("everyones", null);
    const id = await submit("scoped", {
      command: ["true"],
      useRepos: ["mine", "shared", "mine", "everyones"],
    });
    const row = (await getJob(store.db, id))!;
    expect(row.useRepos).toEqual(["mine", "shared", "everyones"]);
    // On the host root nothing is made writable for it.
    expect(row.writableRoot).toBe(false);
    expect((await call("scopedViewer", "GET", `/jobs/${id}`)).body.useRepos).toEqual([
      "mine",
      "shared",
      "everyones",
    ]);
    await assignJob(store, id, "w", "slot-0", 60_000);
    await finishJob(
      store,
      id,
      1,
      { state: "failed", reason: "exit", exitCode: 1, message: null, peakMemoryBytes: null, cpuMs: null },
      0,
    );
    const retry = await call("scoped", "POST", `/jobs/${id}/retry`);
    expect((await getJob(store.db, retry.body.id))!.useRepos).toEqual(["mine", "shared", "everyones"]);
  });

  test("on a template root the job's root is made writable, so Kiln can write the repositories' sources", async () => {
    await repo("mine", "alpha");
    const recipe = { kind: "debootstrap", suite: "bookworm", variant: "minbase", include: [] } as never;
    await putTemplate(store, { name: "deb12", hash: "x", recipe, base: null, createdBy: "admin" });
    const id = await submit("scoped", { command: ["true"], root: "deb12", useRepos: ["mine"] });
    expect((await getJob(store.db, id))!.writableRoot).toBe(true);
  });
});

describe("reading jobs", () => {
  test("a job id that is not a number is a 400; one that does not exist is a 404", async () => {
    expect(refusal(await call("viewer", "GET", "/jobs/abc"))).toEqual([400, "INVALID_JOB_ID"]);
    expect(refusal(await call("viewer", "GET", "/jobs/1e3"))).toEqual([400, "INVALID_JOB_ID"]);
    expect(refusal(await call("viewer", "GET", `/jobs/${"9".repeat(16)}`))).toEqual([400, "INVALID_JOB_ID"]);
    expect(refusal(await call("viewer", "GET", "/jobs/999"))).toEqual([404, "JOB_NOT_FOUND"]);
    expect(refusal(await call("viewer", "GET", "/jobs/999/log"))).toEqual([404, "JOB_NOT_FOUND"]);
  });

  test("a token limited to a project neither lists nor reads another project's jobs (404, not 403)", async () => {
    const mine = await submit("scoped");
    const theirs = await submit("submitter", { command: ["true"], project: "beta" });
    const listed = await call("scopedViewer", "GET", "/jobs?project=beta");
    expect(listed.body.map((j: Json) => j.id)).toEqual([mine]);
    expect(refusal(await call("scopedViewer", "GET", `/jobs/${theirs}`))).toEqual([404, "JOB_NOT_FOUND"]);
    expect(refusal(await call("scopedViewer", "GET", `/jobs/${theirs}/events`))).toEqual([
      404,
      "JOB_NOT_FOUND",
    ]);
    expect(refusal(await call("scoped", "POST", `/jobs/${theirs}/cancel`))).toEqual([404, "JOB_NOT_FOUND"]);
    expect((await call("scopedViewer", "GET", `/jobs/${mine}`)).body.id).toBe(mine);
  });

  test("the list filters by state and refuses a state or limit it does not know", async () => {
    const a = await submit();
    const b = await submit();
    await call("submitter", "POST", `/jobs/${a}/cancel`);
    expect((await call("viewer", "GET", "/jobs?state=queued")).body.map((j: Json) => j.id)).toEqual([b]);
    expect((await call("viewer", "GET", "/jobs?state=cancelled")).body.map((j: Json) => j.id)).toEqual([a]);
    expect(refusal(await call("viewer", "GET", "/jobs?state=sleeping"))).toEqual([400, "BAD_REQUEST"]);
    expect(refusal(await call("viewer", "GET", "/jobs?limit=0"))).toEqual([400, "BAD_REQUEST"]);
    expect(refusal(await call("viewer", "GET", "/jobs?limit=many"))).toEqual([400, "BAD_REQUEST"]);
    expect((await call("viewer", "GET", "/jobs?limit=1")).body).toHaveLength(1);
  });

  test("a log is read from a byte offset; an offset that is not a byte count is a 400", async () => {
    const id = await submit();
    ctx.logs.append(id, "0123456789");
    const from = await app.request(`/api/v1/jobs/${id}/log?offset=4`, {
      headers: { authorization: `Bearer ${tokens.viewer}` },
    });
    expect([from.status, from.headers.get("x-kiln-job-state"), await from.text()]).toEqual([
      200,
      "queued",
      "456789",
    ]);
    const past = await app.request(`/api/v1/jobs/${id}/log?offset=100`, {
      headers: { authorization: `Bearer ${tokens.viewer}` },
    });
    expect(await past.text()).toBe("");
    for (const bad of ["-1", "x", "1.5"])
      expect(refusal(await call("viewer", "GET", `/jobs/${id}/log?offset=${bad}`))).toEqual([
        400,
        "BAD_REQUEST",
      ]);
  });

  test("a job's events are its state history, in order", async () => {
    const id = await submit();
    await call("submitter", "POST", `/jobs/${id}/cancel`);
    const events = (await call("viewer", "GET", `/jobs/${id}/events`)).body;
    expect(events.map((e: Json) => e.state)).toEqual(["queued", "cancelled"]);
  });
});

describe("cancel and retry", () => {
  test("cancelling a queued job ends it; cancelling it again is a 409 that says it ended", async () => {
    const id = await submit();
    const first = await call("submitter", "POST", `/jobs/${id}/cancel`);
    expect([first.status, first.body.state]).toEqual([200, "cancelled"]);
    const again = await call("submitter", "POST", `/jobs/${id}/cancel`);
    expect(refusal(again)).toEqual([409, "JOB_ENDED"]);
    expect(again.body.error.message).toContain("already ended cancelled");
  });

  test("cancelling a running job asks its worker to stop it and leaves it running until it does", async () => {
    const id = await submit();
    await assignJob(store, id, "w", "slot-0", 60_000);
    await markRunning(store, id, 1, "w", 60_000);
    const got: unknown[] = [];
    ctx.registry.add({ name: "w", send: (m: unknown) => got.push(m) } as unknown as LiveWorker);
    const r = await call("submitter", "POST", `/jobs/${id}/cancel`);
    expect([r.status, r.body.state]).toEqual([200, "running"]);
    expect(got).toEqual([{ type: "job.cancel", jobId: id, attempt: 1 }]);
  });

  test("a job still queued or running cannot be retried; an ended one is queued again as a new job", async () => {
    const id = await submit();
    expect(refusal(await call("submitter", "POST", `/jobs/${id}/retry`))).toEqual([409, "JOB_ACTIVE"]);
    await assignJob(store, id, "w", "slot-0", 60_000);
    await finishJob(
      store,
      id,
      1,
      {
        state: "failed",
        reason: "exit",
        exitCode: 3,
        message: null,
        peakMemoryBytes: null,
        cpuMs: null,
      },
      0,
    );
    const r = await call("operator", "POST", `/jobs/${id}/retry`);
    expect(r.status).toBe(201);
    const copy = (await getJob(store.db, r.body.id))!;
    expect([copy.state, copy.retryOf, copy.command, copy.submittedBy]).toEqual([
      "queued",
      id,
      ["echo", "hi"],
      "operator",
    ]);
  });
});

describe("rebuild", () => {
  /** Runs job `id` to `state` on worker `w`, as a worker's reports would. */
  async function finish(id: number, w: string, state: "succeeded" | "failed" = "succeeded") {
    await assignJob(store, id, w, "slot-0", 60_000);
    await markRunning(store, id, 1, w, 60_000);
    const outcome = {
      state,
      reason: state === "failed" ? ("exit" as const) : null,
      exitCode: state === "failed" ? 1 : 0,
    };
    await finishJob(store, id, 1, { ...outcome, message: null, peakMemoryBytes: null, cpuMs: null }, 0);
  }

  test("only a succeeded job is rebuilt, by a submitter of its project, and never into its repository", async () => {
    const failed = await submit();
    await finish(failed, "w1", "failed");
    expect(refusal(await call("submitter", "POST", `/jobs/${failed}/rebuild`))).toEqual([
      409,
      "JOB_NOT_REBUILDABLE",
    ]);
    const queued = await submit();
    expect(refusal(await call("submitter", "POST", `/jobs/${queued}/rebuild`))).toEqual([
      409,
      "JOB_NOT_REBUILDABLE",
    ]);
    const ok = await submit();
    await finish(ok, "w1");
    expect(refusal(await call("viewer", "POST", `/jobs/${ok}/rebuild`))).toEqual([403, "FORBIDDEN"]);
    expect(refusal(await call("scoped", "POST", `/jobs/${ok}/rebuild`))).toEqual([404, "JOB_NOT_FOUND"]);
    const r = await call("submitter", "POST", `/jobs/${ok}/rebuild`);
    expect(r.status).toBe(201);
    const copy = (await getJob(store.db, r.body.id))!;
    expect([copy.rebuildOf, copy.avoidWorker, copy.repo, copy.command]).toEqual([
      ok,
      "w1",
      null,
      ["echo", "hi"],
    ]);
  });

  test("a rebuild is refused when the template its job ran on has changed since", async () => {
    const recipe = { kind: "debootstrap", suite: "bookworm", variant: "minbase", include: [] } as never;
    await putTemplate(store, { name: "t", hash: "x", recipe, base: null, createdBy: "admin" });
    const id = await submit("submitter", { command: ["true"], root: "t" });
    await finish(id, "w1");
    await store.write(async (tx) => {
      await tx.update(jobs).set({ templateHash: "0123456789abcdef-then" }).where(eq(jobs.id, id));
    });
    const r = await call("submitter", "POST", `/jobs/${id}/rebuild`);
    expect(refusal(r)).toEqual([409, "TEMPLATE_CHANGED"]);
    expect(r.body.error.message).toContain("template t changed since job");
  });

  test("show compares a job and its rebuild artifact by artifact, on both jobs", async () => {
    const id = await submit();
    await finish(id, "w1");
    const rebuild = (await call("submitter", "POST", `/jobs/${id}/rebuild`)).body.id as number;
    expect((await call("viewer", "GET", `/jobs/${id}`)).body.reproducibility.state).toBe("pending");
    await finish(rebuild, "w2");
    const blob = (sha: string) => ({ kind: "other", store: "fs", size: 1, sha256: sha, mode: 0o644 });
    await putArtifact(store, { jobId: id, name: "same.txt", attempt: 1, ...blob("a".repeat(64)) });
    await putArtifact(store, { jobId: rebuild, name: "same.txt", attempt: 1, ...blob("a".repeat(64)) });
    await putArtifact(store, { jobId: id, name: "stamp", attempt: 1, ...blob("b".repeat(64)) });
    await putArtifact(store, { jobId: rebuild, name: "stamp", attempt: 1, ...blob("c".repeat(64)) });
    for (const job of [id, rebuild]) {
      const r = (await call("viewer", "GET", `/jobs/${job}`)).body.reproducibility;
      expect([r.state, r.original, r.rebuild, r.workers]).toEqual([
        "differs",
        id,
        rebuild,
        { original: "w1", rebuild: "w2" },
      ]);
      expect(r.artifacts.map((x: Json) => [x.name, x.same])).toEqual([
        ["same.txt", true],
        ["stamp", false],
      ]);
    }
    expect((await call("viewer", "GET", `/jobs/${rebuild}`)).body.rebuildOf).toBe(id);
  });
});

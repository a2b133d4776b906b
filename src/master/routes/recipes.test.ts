import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { listJobs } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { insertRepo } from "../../store/repos.ts";
import { putTemplate } from "../../store/templates.ts";
import { createToken, type Role } from "../../store/tokens.ts";
import { createApp } from "../app.ts";
import { testContext } from "../test-context.ts";

/*
 * The recipe endpoints and recipe submits, in process against a real store: roles, versions, the 400s a
 * bad submit gets, and that a refused submit queues nothing.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;
const tokens: Partial<Record<Role, string>> = {};

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-recipes-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  const ctx = testContext(dir, store);
  app = createApp(ctx);
  for (const role of ["operator", "submitter", "viewer"] as const)
    tokens[role] = (await createToken(store, { role, name: role })).secret;
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

// Response bodies are read loosely: the assertions below are what checks their shape.
// biome-ignore lint/suspicious/noExplicitAny: see above.
type Json = Record<string, any>;

async function call(role: Role, method: string, path: string, body?: unknown) {
  const res = await app.request(`/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${tokens[role]}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

const SOURCE = `
description = "say something"
script = "echo {{msg}} {{who}}"
[vars.msg]
required = true
pattern = "^[a-z ]+$"
[vars.who]
default = "world"
[submit]
channel = "build"
priority = 5
memory = "64M"
env = { A = "recipe", B = "recipe" }
`;

describe("recipe endpoints", () => {
  test("operators add versions, viewers read them, and the listing shows the latest", async () => {
    expect((await call("viewer", "POST", "/recipes", { name: "say", source: SOURCE })).status).toBe(403);
    const v1 = await call("operator", "POST", "/recipes", { name: "say", source: SOURCE, file: "say.toml" });
    expect([v1.status, v1.body.version]).toEqual([201, 1]);
    const v2 = await call("operator", "POST", "/recipes", {
      name: "say",
      source: SOURCE.replace("say something", "say it"),
    });
    expect(v2.body.version).toBe(2);
    const ls = await call("viewer", "GET", "/recipes");
    expect(ls.body).toMatchObject([{ name: "say", version: 2, description: "say it" }]);
    const old = await call("viewer", "GET", "/recipes/say?version=1");
    expect([old.body.version, old.body.description, old.body.source]).toEqual([1, "say something", SOURCE]);
    expect((await call("viewer", "GET", "/recipes/say?version=9")).status).toBe(404);
  });

  test("the OpenAPI document lists the recipe endpoints", async () => {
    const doc = (await (await app.request("/api/v1/openapi.json")).json()) as {
      paths: Record<string, object>;
    };
    expect(Object.keys(doc.paths["/api/v1/recipes"]!)).toEqual(["get", "post"]);
    expect(Object.keys(doc.paths["/api/v1/recipes/{name}"]!)).toEqual(["get", "delete"]);
  });

  test("an invalid recipe or name is refused with a 400 that names the file", async () => {
    const bad = await call("operator", "POST", "/recipes", {
      name: "say",
      source: "scrpt = 1",
      file: "x.toml",
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error).toEqual({
      code: "RECIPE_INVALID",
      message: 'x.toml: unknown key "scrpt": the top level takes description, script, setup, vars, submit',
    });
    const name = await call("operator", "POST", "/recipes", { name: "../x", source: SOURCE });
    expect([name.status, name.body.error.code]).toEqual([400, "INVALID_NAME"]);
  });

  test("removing needs the operator role and keeps old versions readable", async () => {
    await call("operator", "POST", "/recipes", { name: "say", source: SOURCE });
    expect((await call("submitter", "DELETE", "/recipes/say")).status).toBe(403);
    expect((await call("operator", "DELETE", "/recipes/say")).status).toBe(200);
    expect((await call("operator", "DELETE", "/recipes/say")).status).toBe(404);
    expect((await call("viewer", "GET", "/recipes/say")).status).toBe(404);
    const kept = await call("viewer", "GET", "/recipes/say?version=1");
    expect(kept.body.deletedAt).not.toBeNull();
    const submit = await call("submitter", "POST", "/jobs", { recipe: "say", vars: { msg: "hi" } });
    expect([submit.status, submit.body.error.code]).toEqual([404, "RECIPE_NOT_FOUND"]);
  });
});

describe("submitting a recipe", () => {
  beforeEach(async () => {
    await call("operator", "POST", "/recipes", { name: "say", source: SOURCE });
  });

  test("the job gets the recipe's options, the request's own options win, and env merges by key", async () => {
    const res = await call("submitter", "POST", "/jobs", {
      recipe: "say",
      vars: { msg: "hello there" },
      priority: 1,
      env: { B: "request", KILN_VAR_MSG: "sneaky" },
    });
    expect(res.status).toBe(201);
    const job = await call("viewer", "GET", `/jobs/${res.body.id}`);
    expect(job.body).toMatchObject({
      channel: "build",
      priority: 1,
      name: "say v1 msg=hello there who=world",
      resources: { memoryBytes: 64 << 20 },
      recipe: { name: "say", version: 1, vars: { msg: "hello there", who: "world" } },
    });
    expect(job.body.command).toEqual([
      "/bin/sh",
      "-ec",
      `echo "\${KILN_VAR_MSG}" "\${KILN_VAR_WHO}"`,
      "recipe:say",
    ]);
    const [row] = await listJobs(store.db, {});
    expect(row!.env).toEqual({
      A: "recipe",
      B: "request",
      KILN_VAR_MSG: "hello there",
      KILN_VAR_WHO: "world",
    });
  });

  test("an unknown, missing or malformed value is a 400 and nothing is queued", async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{ recipe: "say", vars: { msg: "hi", nope: "x" } }, "RECIPE_VAR_UNKNOWN"],
      [{ recipe: "say", vars: {} }, "RECIPE_VAR_MISSING"],
      [{ recipe: "say", vars: { msg: "$(id)" } }, "RECIPE_VAR_INVALID"],
      [{ recipe: "say", command: ["true"] }, "INVALID_REQUEST"],
      [{ command: ["true"], vars: { a: "b" } }, "INVALID_REQUEST"],
      [{}, "INVALID_REQUEST"],
    ];
    for (const [body, code] of cases) {
      const res = await call("submitter", "POST", "/jobs", body);
      expect([res.status, res.body.error.code]).toEqual([400, code]);
    }
    expect(await listJobs(store.db, {})).toEqual([]);
  });

  test("a viewer cannot submit a recipe", async () => {
    expect((await call("viewer", "POST", "/jobs", { recipe: "say", vars: { msg: "hi" } })).status).toBe(403);
  });

  test("retry keeps the recipe version and values even after a new version", async () => {
    const first = await call("submitter", "POST", "/jobs", { recipe: "say", vars: { msg: "one" } });
    await call("operator", "POST", "/recipes", { name: "say", source: SOURCE.replace("echo", "printf") });
    await store.client.execute({
      sql: "UPDATE jobs SET state = 'failed', reason = 'exit' WHERE id = ?",
      args: [first.body.id],
    });
    const retry = await call("submitter", "POST", `/jobs/${first.body.id}/retry`);
    const copy = await call("viewer", "GET", `/jobs/${retry.body.id}`);
    expect(copy.body.recipe).toEqual({ name: "say", version: 1, vars: { msg: "one", who: "world" } });
    expect(copy.body.command[2]).toStartWith("echo");
    const fresh = await call("submitter", "POST", "/jobs", { recipe: "say", vars: { msg: "two" } });
    expect((await call("viewer", "GET", `/jobs/${fresh.body.id}`)).body.recipe.version).toBe(2);
  });

  test("a recipe's setup goes with its job, which gets a writable template root; a plain submit cannot give one", async () => {
    await putTemplate(store, {
      name: "bookworm-build",
      hash: "a".repeat(64),
      recipe: {
        kind: "debootstrap",
        suite: "bookworm",
        variant: "minbase",
        include: [],
        mirror: null,
      } as never,
      base: null,
      createdBy: "test",
    });
    const setup = `${SOURCE.replace('script = "echo', 'setup = "apt-get install -y {{who}}"\nscript = "echo')}`;
    await call("operator", "POST", "/recipes", { name: "deps", source: setup });
    const onHost = await call("submitter", "POST", "/jobs", { recipe: "deps", vars: { msg: "hi" } });
    expect([onHost.status, onHost.body.error.code]).toEqual([400, "RECIPE_SETUP_ROOT"]);
    expect(onHost.body.error.message).toContain("submit with --root TEMPLATE");
    const res = await call("submitter", "POST", "/jobs", {
      recipe: "deps",
      vars: { msg: "hi" },
      root: "bookworm-build",
    });
    expect(res.status).toBe(201);
    const job = await call("viewer", "GET", `/jobs/${res.body.id}`);
    expect(job.body.setup).toBe(`apt-get install -y "\${KILN_VAR_WHO}"`);
    expect(job.body.resources).toMatchObject({ root: "bookworm-build", writableRoot: true });
    // A plain submit has no setup field: a submitter cannot make a job that starts as root.
    const plain = await call("submitter", "POST", "/jobs", {
      command: ["true"],
      root: "bookworm-build",
      setup: "id",
    });
    expect([plain.status, plain.body.error.code]).toEqual([400, "INVALID_REQUEST"]);
    const ops = await call("operator", "POST", "/jobs", { command: ["true"], setup: "id" });
    expect(ops.status).toBe(400);
    expect((await listJobs(store.db, {})).map((j) => j.setup)).toEqual([
      `apt-get install -y "\${KILN_VAR_WHO}"`,
    ]);
  });

  test("a recipe's use_repos go with its jobs, a submit's --use-repo adds to them, and each must exist", async () => {
    for (const name of ["tools", "extra"])
      await insertRepo(store, {
        name,
        format: "deb",
        project: null,
        public: false,
        dist: "stable",
        component: "main",
        archs: ["amd64"],
        keep: 3,
        keyFingerprint: null,
        createdAt: Date.now(),
        createdBy: "test",
      });
    const add = await call("operator", "POST", "/recipes", {
      name: "uses",
      source: `script = "true"\n[submit]\nuse_repos = ["tools"]\n`,
    });
    expect(add.status).toBe(201);
    const plain = await call("submitter", "POST", "/jobs", { recipe: "uses" });
    expect((await call("viewer", "GET", `/jobs/${plain.body.id}`)).body.useRepos).toEqual(["tools"]);
    const more = await call("submitter", "POST", "/jobs", { recipe: "uses", useRepos: ["extra", "tools"] });
    expect((await call("viewer", "GET", `/jobs/${more.body.id}`)).body.useRepos).toEqual(["tools", "extra"]);
    const missing = await call("submitter", "POST", "/jobs", { recipe: "uses", useRepos: ["nosuch"] });
    expect([missing.status, missing.body.error.code]).toEqual([400, "REPO_NOT_FOUND"]);
  });

  test("a plain job shows recipe null", async () => {
    const res = await call("submitter", "POST", "/jobs", { command: ["true"] });
    expect((await call("viewer", "GET", `/jobs/${res.body.id}`)).body.recipe).toBeNull();
  });
});

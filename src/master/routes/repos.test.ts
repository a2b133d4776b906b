import { afterEach, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildDeb, controlText } from "../../repo/deb-build.ts";
import { assignJob, finishJob, insertJob, markRunning } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { testJob } from "../../store/test-job.ts";
import { createToken, type Role } from "../../store/tokens.ts";
import { createApp } from "../app.ts";
import type { MasterContext } from "../context.ts";
import { newJobCredential } from "../job-credential.ts";
import { testContext } from "../test-context.ts";

/*
 * The repository endpoints in process against a real store: who may add, read and publish (roles and
 * projects), what a submit naming a repository gets, how files are served (public or by token, HEAD,
 * Range, If-Modified-Since), that no path climbs out, and the job's version lookup through its worker.
 */

// Each test makes repositories, and each repository signs its metadata with gpg: seconds, not milliseconds.
setDefaultTimeout(60_000);

let dir: string;
let store: Store;
let ctx: MasterContext;
let app: ReturnType<typeof createApp>;
const tokens: Record<string, string> = {};

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-repo-routes-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  ctx = testContext(dir, store);
  app = createApp(ctx);
  const make = async (key: string, role: Role, project?: string) => {
    tokens[key] = (await createToken(store, { role, name: key, project })).secret;
  };
  await make("admin", "admin");
  await make("operator", "operator");
  await make("submitter", "submitter");
  await make("viewer", "viewer");
  await make("worker", "worker");
  await make("a-viewer", "viewer", "a");
  await make("a-submitter", "submitter", "a");
  await make("b-viewer", "viewer", "b");
  await make("b-submitter", "submitter", "b");
  await make("b-operator", "operator", "b");
});
afterEach(async () => {
  await ctx.repos.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

// Response bodies are read loosely: the assertions below are what checks their shape.
// biome-ignore lint/suspicious/noExplicitAny: see above.
type Json = Record<string, any>;

async function call(who: string, method: string, path: string, body?: unknown) {
  const res = await app.request(`/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${tokens[who]}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Json };
}

const add = (who: string, body: Json) => call(who, "POST", "/repos", { format: "deb", ...body });

/** A job of `project` that succeeded with one .deb artifact stored as a worker would have left it. */
async function jobWithDeb(project: string, name = "kiln-hello", version = "1.0-1") {
  const row = await insertJob(store, testJob({ name: "build", project }));
  // The attempt's own credential: its worker uploads and asks versions with it.
  const credential = newJobCredential(row.id);
  tokens[`job${row.id}`] = credential.secret;
  await assignJob(store, row.id, "w", "slot-0", 60_000, Date.now(), credential.hash);
  await markRunning(store, row.id, 1, "w", 60_000);
  const bytes = buildDeb({ control: controlText({ name, version, arch: "amd64" }) });
  const sha256 = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
  const res = await app.request(`/api/v1/worker/artifacts/${row.id}/1/${name}.deb`, {
    method: "PUT",
    headers: {
      authorization: `Bearer ${credential.secret}`,
      "x-kiln-sha256": sha256,
      "x-kiln-size": String(bytes.length),
    },
    body: bytes,
  });
  expect(res.status).toBe(201);
  return row;
}

const succeed = (id: number) =>
  finishJob(
    store,
    id,
    1,
    { state: "succeeded", reason: null, exitCode: 0, message: null, peakMemoryBytes: null, cpuMs: null },
    0,
  );

describe("adding and reading repositories", () => {
  test("operators add repositories; submitters and viewers cannot; names and types are checked", async () => {
    expect((await add("submitter", { name: "tools" })).status).toBe(403);
    const r = await add("operator", { name: "tools", dist: "bookworm" });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({
      name: "tools",
      format: "deb",
      dist: "bookworm",
      component: "main",
      keep: 3,
    });
    expect(r.body.archs).toEqual(["amd64", "all"]);
    expect((await add("operator", { name: "tools" })).body.error.code).toBe("REPO_EXISTS");
    for (const name of ["../x", "a/b", "..", "Tools", ".hidden", "x".repeat(64)]) {
      const bad = await add("operator", { name });
      expect([name, bad.status, bad.body.error.code]).toEqual([name, 400, "INVALID_NAME"]);
    }
    expect((await add("operator", { name: "z", format: "zip" })).status).toBe(400);
    expect((await add("operator", { name: "z", format: "rpm", dist: "x" })).body.error.message).toContain(
      "are for deb repositories",
    );
    expect((await add("operator", { name: "z", archs: ["amd64", "../x"] })).status).toBe(400);
    expect((await add("operator", { name: "z", dist: "../../etc" })).body.error.code).toBe("INVALID_NAME");
    const rpm = await add("operator", { name: "rpms", format: "rpm" });
    expect([rpm.body.archs, rpm.body.dist]).toEqual([["x86_64", "noarch"], null]);

    const shown = await call("viewer", "GET", "/repos/tools");
    expect(shown.body.usage.sourcesLine).toBe(
      "deb [signed-by=/etc/apt/keyrings/tools.asc] http://localhost/repos/tools bookworm main",
    );
    expect((await call("viewer", "GET", "/repos/rpms")).body.usage.repoFile).toContain(
      "baseurl=http://localhost/repos/rpms/\n",
    );
    expect((await call("viewer", "GET", "/repos")).body.map((x: Json) => x.name)).toEqual(["rpms", "tools"]);
    expect((await call("operator", "DELETE", "/repos/rpms")).status).toBe(200);
    expect((await call("viewer", "GET", "/repos/rpms")).body.error.code).toBe("REPO_NOT_FOUND");
  });

  test("a project's repository is its own: other projects neither see nor publish into it, unless public to read", async () => {
    expect((await add("operator", { name: "a-private", project: "a" })).status).toBe(201);
    expect((await add("operator", { name: "a-public", project: "a", public: true })).status).toBe(201);
    expect((await add("operator", { name: "shared" })).status).toBe(201);
    // A scoped operator adds only in its own project.
    expect((await add("b-operator", { name: "b-own" })).body.project).toBe("b");
    expect((await add("b-operator", { name: "b-other", project: "a" })).status).toBe(403);

    const seen = async (who: string) => (await call(who, "GET", "/repos")).body.map((x: Json) => x.name);
    expect(await seen("b-viewer")).toEqual(["a-public", "b-own", "shared"]);
    expect(await seen("a-viewer")).toEqual(["a-private", "a-public", "shared"]);
    expect((await call("b-viewer", "GET", "/repos/a-private")).status).toBe(404);

    const submit = (who: string, repo: string, project?: string) =>
      call(who, "POST", "/jobs", { command: ["true"], repo, ...(project ? { project } : {}) });
    expect((await submit("a-submitter", "a-private")).status).toBe(201);
    expect((await submit("a-submitter", "shared")).status).toBe(201);
    const hidden = await submit("b-submitter", "a-private");
    expect([hidden.status, hidden.body.error.code]).toEqual([400, "REPO_NOT_FOUND"]);
    const readOnly = await submit("b-submitter", "a-public");
    expect([readOnly.status, readOnly.body.error.message]).toEqual([
      403,
      "repository a-public belongs to project a: jobs of project b cannot publish into it",
    ]);
    const missing = await submit("submitter", "nope");
    expect([missing.status, missing.body.error.message]).toEqual([
      400,
      expect.stringContaining("no repository nope"),
    ]);
    expect((await call("submitter", "POST", "/jobs", { command: ["true"], repoForce: true })).status).toBe(
      400,
    );

    // A recipe's default repository is checked the same way, and a submit's own --repo wins over it.
    const recipe = (repo: string) => `description = "build"\nscript = "true"\n[submit]\nrepo = "${repo}"\n`;
    expect(
      (await call("operator", "POST", "/recipes", { name: "to-shared", source: recipe("shared") })).status,
    ).toBe(201);
    expect(
      (await call("operator", "POST", "/recipes", { name: "to-nowhere", source: recipe("nowhere") })).status,
    ).toBe(201);
    expect((await call("submitter", "POST", "/jobs", { recipe: "to-shared" })).status).toBe(201);
    const nowhere = await call("submitter", "POST", "/jobs", { recipe: "to-nowhere" });
    expect([nowhere.status, nowhere.body.error.code]).toEqual([400, "REPO_NOT_FOUND"]);
    expect((await call("submitter", "POST", "/jobs", { recipe: "to-nowhere", repo: "shared" })).status).toBe(
      201,
    );
  });
});

describe("serving files", () => {
  beforeEach(async () => {
    expect((await add("operator", { name: "open", public: true })).status).toBe(201);
    expect((await add("operator", { name: "closed", project: "a" })).status).toBe(201);
  });

  const fetchFile = (path: string, headers: Record<string, string> = {}, method = "GET") =>
    app.request(path, { method, headers });
  const release = "/dists/stable/Release";

  test("a public repository needs no token; a private one takes its project's token as Bearer or Basic", async () => {
    expect((await fetchFile(`/repos/open${release}`)).status).toBe(200);
    const anon = await fetchFile(`/repos/closed${release}`);
    expect(anon.status).toBe(401);
    expect(anon.headers.get("www-authenticate")).toBe('Basic realm="kiln repository closed"');
    expect(
      (await fetchFile(`/repos/closed${release}`, { authorization: `Bearer ${tokens["a-viewer"]}` })).status,
    ).toBe(200);
    const basic = `Basic ${Buffer.from(`kiln:${tokens["a-viewer"]}`).toString("base64")}`;
    expect((await fetchFile(`/repos/closed${release}`, { authorization: basic })).status).toBe(200);
    // Another project's token, a worker token, a wrong one: as if there were no such repository.
    for (const t of ["b-viewer", "worker"])
      expect(
        (await fetchFile(`/repos/closed${release}`, { authorization: `Bearer ${tokens[t]}` })).status,
      ).toBe(404);
    expect((await fetchFile(`/repos/closed${release}`, { authorization: "Bearer kiln_nope" })).status).toBe(
      401,
    );
    expect((await fetchFile("/repos/nothing/dists/stable/Release")).status).toBe(404);
  });

  test("no path climbs out of the repository, however it is spelt", async () => {
    mkdirSync(join(dir, "repos", "secret"), { recursive: true });
    for (const path of [
      "/repos/open/..%2F..%2Fkiln.db",
      // URL parsing resolves "." and ".." segments (encoded too) before routing: these name /kiln.db.
      "/repos/open/%2e%2e/%2e%2e/kiln.db",
      "/repos/open/dists//stable/Release",
      "/repos/open/dists/stable%2FRelease",
      "/repos/open/%2Fetc%2Fpasswd",
      "/repos/open/dists/stable/Release%00",
      "/repos/..%2F..%2Fkiln.db/x",
      "/repos/open/dists/..\\..\\kiln.db",
      "/repos/.incoming/x",
      "/repos/open/../../kiln.db",
      "/repos/open/snapshots/0/key.asc",
      "/repos/open/current/key.asc",
      "/repos/open/packages/x",
    ]) {
      // Refused, or (where the URL parser already resolved it elsewhere) sent to a name that is no file.
      const res = await fetchFile(path);
      expect([path, res.status >= 300 && res.status < 500]).toEqual([path, true]);
    }
  });

  test("HEAD, one byte range, and If-Modified-Since work as for artifacts", async () => {
    const whole = await fetchFile(`/repos/open${release}`);
    const bytes = new Uint8Array(await whole.arrayBuffer());
    expect(whole.headers.get("accept-ranges")).toBe("bytes");
    const head = await fetchFile(`/repos/open${release}`, {}, "HEAD");
    expect([head.status, head.headers.get("content-length"), (await head.arrayBuffer()).byteLength]).toEqual([
      200,
      String(bytes.length),
      0,
    ]);
    const part = await fetchFile(`/repos/open${release}`, { range: "bytes=5-9" });
    expect([part.status, part.headers.get("content-range")]).toEqual([206, `bytes 5-9/${bytes.length}`]);
    expect(new Uint8Array(await part.arrayBuffer())).toEqual(bytes.subarray(5, 10));
    expect((await fetchFile(`/repos/open${release}`, { range: `bytes=${bytes.length}-` })).status).toBe(416);
    const since = whole.headers.get("last-modified") as string;
    expect((await fetchFile(`/repos/open${release}`, { "if-modified-since": since })).status).toBe(304);
  });
});

describe("publishing through the API and the job's version lookup", () => {
  test("a succeeded job's package is published; a job's worker reads its newest version with the job's credential", async () => {
    expect((await add("operator", { name: "tools", project: "a" })).status).toBe(201);
    const job = await jobWithDeb("a");
    // The attempt still runs: its worker may ask for versions, nobody may publish it yet.
    const none = await call(
      `job${job.id}`,
      "GET",
      `/worker/jobs/${job.id}/1/repo-version?repo=tools&pkg=kiln-hello`,
    );
    expect([none.status, none.body.error.code]).toEqual([404, "PACKAGE_NOT_FOUND"]);
    expect((await call("a-submitter", "POST", "/repos/tools/publish", { job: job.id })).status).toBe(409);
    await succeed(job.id);
    expect((await call("b-submitter", "POST", "/repos/tools/publish", { job: job.id })).status).toBe(404);
    const r = await call("a-submitter", "POST", "/repos/tools/publish", { job: job.id });
    expect([r.status, r.body.added]).toEqual([
      200,
      [
        {
          name: "kiln-hello",
          version: "1.0-1",
          arch: "amd64",
          path: "pool/main/k/kiln-hello/kiln-hello_1.0-1_amd64.deb",
        },
      ],
    ]);
    const again = await call("a-submitter", "POST", "/repos/tools/publish", { job: job.id });
    expect([again.body.added.length, again.body.unchanged.length]).toEqual([0, 1]);
    const listed = await call("a-viewer", "GET", "/repos/tools/packages");
    expect(listed.body.map((p: Json) => [p.name, p.version, p.job])).toEqual([
      ["kiln-hello", "1.0-1", job.id],
    ]);

    // A newer build's job asks while it runs: the version is the repository's newest.
    const next = await jobWithDeb("a", "kiln-hello", "1.1-1");
    const v = await call(
      `job${next.id}`,
      "GET",
      `/worker/jobs/${next.id}/1/repo-version?repo=tools&pkg=kiln-hello`,
    );
    expect(v.body).toEqual({ repo: "tools", name: "kiln-hello", version: "1.0-1", arch: "amd64" });
    expect(
      (await call("viewer", "GET", `/worker/jobs/${next.id}/1/repo-version?repo=tools&pkg=x`)).status,
    ).toBe(403);
    // A worker token is not the job's credential; the first job's ended with it.
    expect(
      (await call("worker", "GET", `/worker/jobs/${next.id}/1/repo-version?repo=tools&pkg=x`)).status,
    ).toBe(403);
    expect(
      (await call(`job${job.id}`, "GET", `/worker/jobs/${job.id}/1/repo-version?repo=tools&pkg=x`)).status,
    ).toBe(401);
    expect(
      (await call(`job${next.id}`, "GET", `/worker/jobs/${next.id}/2/repo-version?repo=tools&pkg=x`)).status,
    ).toBe(409);
    // A job of another project cannot look into this project's private repository.
    const other = await jobWithDeb("b");
    const hidden = await call(
      `job${other.id}`,
      "GET",
      `/worker/jobs/${other.id}/1/repo-version?repo=tools&pkg=kiln-hello`,
    );
    expect(hidden.body.error.code).toBe("REPO_NOT_FOUND");
  });

  test("an operator's key replaces the master's; a public key or a protected one is refused", async () => {
    expect((await add("operator", { name: "tools", public: true })).status).toBe(201);
    const home = join(dir, "operator-gnupg");
    mkdirSync(home, { mode: 0o700 });
    const gpg = (args: string[]) =>
      Bun.spawnSync(["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", ...args], {
        stderr: "pipe",
      });
    gpg(["--passphrase", "", "--quick-gen-key", "Operator <op@example.invalid>", "ed25519", "sign", "never"]);
    gpg([
      "--passphrase",
      "secret",
      "--quick-gen-key",
      "Locked <lk@example.invalid>",
      "ed25519",
      "sign",
      "never",
    ]);
    const secret = gpg(["--passphrase", "", "--armor", "--export-secret-keys", "op@example.invalid"]).stdout;
    const locked = gpg([
      "--passphrase",
      "secret",
      "--armor",
      "--export-secret-keys",
      "lk@example.invalid",
    ]).stdout;
    const pub = gpg(["--armor", "--export", "op@example.invalid"]).stdout;
    const put = (who: string, body: Uint8Array) =>
      app.request("/api/v1/repos/tools/key", {
        method: "PUT",
        headers: { authorization: `Bearer ${tokens[who]}` },
        body,
      });
    expect((await put("submitter", secret)).status).toBe(403);
    const refused = async (body: Uint8Array, words: string) => {
      const res = await put("operator", body);
      const json = (await res.json()) as Json;
      expect([res.status, json.error.code, json.error.message]).toEqual([
        400,
        "KEY_INVALID",
        expect.stringContaining(words),
      ]);
    };
    await refused(pub, "only a public key");
    await refused(locked, "passphrase");
    await refused(new TextEncoder().encode("not a key"), "no OpenPGP key");
    const ok = await put("operator", secret);
    const json = (await ok.json()) as Json;
    expect(ok.status).toBe(200);
    expect(json.uid).toBe("Operator <op@example.invalid>");
    const served = await (await app.request("/repos/tools/key.asc")).text();
    const fpr = /^fpr:+([0-9A-F]+):/m.exec(
      Bun.spawnSync(["gpg", "--with-colons", "--import-options", "show-only", "--import"], {
        stdin: new TextEncoder().encode(served),
        env: { GNUPGHOME: home, PATH: process.env.PATH ?? "" },
      }).stdout.toString(),
    )?.[1];
    expect(fpr).toBe(json.fingerprint);
    expect((await call("viewer", "GET", "/repos/tools")).body.keyFingerprint).toBe(json.fingerprint);
    Bun.spawnSync(["gpgconf", "--homedir", home, "--kill", "gpg-agent"]);
  });
});

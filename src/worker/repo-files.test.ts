import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { startApiProxy } from "../job-api/api-proxy.ts";
import { setupLogging } from "../lib/log.ts";
import type { RunningMaster } from "../master/index.ts";
import { newJobCredential } from "../master/job-credential.ts";
import { startTestMaster, type TestMaster } from "../master/test-master.ts";
import { bearerAuth } from "../protocol/master-auth.ts";
import { buildDeb, controlText } from "../repo/deb-build.ts";
import { createArtifactBudget } from "../runner/artifact-budget.ts";
import { assignJob, finishJob, insertJob, markRunning } from "../store/jobs.ts";
import { testJob } from "../store/test-job.ts";
import { createToken } from "../store/tokens.ts";
import { repoFileFetcher } from "./repo-files.ts";

/*
 * The repositories a job uses (`--use-repo`) through its real API proxy on a Unix socket, forwarded by the
 * worker's fetcher with the job's own credential to a real master: what the job may reach, every way a
 * request could climb to another repository, and a large package streamed whole to a client that reads
 * slowly. Requests are written by hand: an HTTP client would resolve "../" before the proxy saw it.
 */

setupLogging("json", "error");
// The repositories sign their metadata with gpg: seconds each, more on a busy machine.
setDefaultTimeout(120_000);

let fixture: TestMaster;
let dir: string;
let master: RunningMaster;
let admin = "";
let big = { path: "", sha256: "", size: 0 };
let job = { id: 0, credential: "" };
const proxies: { close(): void }[] = [];

const OUTCOME = {
  state: "succeeded" as const,
  reason: null,
  exitCode: 0,
  message: null,
  peakMemoryBytes: null,
  cpuMs: null,
};

async function api(method: string, path: string, body?: unknown, raw?: Uint8Array, headers = {}) {
  const res = await fetch(`${master.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${admin}`, "content-type": "application/json", ...headers },
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** A running job of `project` using `useRepos`, with its attempt's credential. */
async function runningJob(project: string, useRepos: string[]) {
  const store = master.ctx.store;
  const row = await insertJob(
    store,
    testJob({
      name: "fixture",
      project,
      channel: "fixtures",
      useRepos,
    }),
  );
  const credential = newJobCredential(row.id);
  await assignJob(store, row.id, "w1", "slot-0", 3_600_000, Date.now(), credential.hash);
  await markRunning(store, row.id, 1, "w1", 3_600_000);
  return { id: row.id, credential: credential.secret };
}

/** The API proxy of a job using `useRepos` with `credential`; its socket's path. */
function proxyFor(useRepos: string[], credential: string): string {
  const socket = join(dir, `api-${proxies.length}.sock`);
  const fetchFile = repoFileFetcher(master.url, bearerAuth("unused: the job's credential is sent"));
  proxies.push(
    startApiProxy(socket, {
      jobId: 1,
      attempt: 1,
      egress: [],
      useRepos,
      repoFile: (name, path, init) => fetchFile(credential, name, path, init),
      outDir: join(dir, "out"),
      artifacts: createArtifactBudget(1 << 20),
      progress() {},
      markBroken() {},
      template: async () => "",
      repoVersion: async () => ({ version: "" }),
    }),
  );
  return socket;
}

/**
 * Sends `request` (a request head, as written) on `socket` and reads the whole answer. With `slow`, the
 * client stops reading after every chunk and reads on only once the event loop has gone round, so the
 * proxy's writes keep meeting a full socket.
 */
async function exchange(socket: string, request: string, slow = false) {
  const chunks: Uint8Array[] = [];
  let done!: () => void;
  const ended = new Promise<void>((r) => {
    done = r;
  });
  await Bun.connect({
    unix: socket,
    socket: {
      open(s) {
        s.write(request);
      },
      data(s, chunk) {
        chunks.push(new Uint8Array(chunk));
        if (slow) {
          s.pause();
          setImmediate(() => s.resume());
        }
      },
      close: () => done(),
      end: (s) => {
        s.end();
        done();
      },
    },
  });
  await ended;
  const all = Buffer.concat(chunks);
  const at = all.indexOf("\r\n\r\n");
  const head = all.subarray(0, at).toString("latin1");
  const status = Number(head.split(" ")[1]);
  const headers = new Map(
    head
      .split("\r\n")
      .slice(1)
      .map((l) => [l.slice(0, l.indexOf(":")).toLowerCase(), l.slice(l.indexOf(":") + 1).trim()]),
  );
  const body = all.subarray(at + 4);
  let code: string | undefined;
  try {
    code = JSON.parse(body.toString()).error?.code;
  } catch {
    // Not an error document.
  }
  return { status, headers, body, code };
}

const get = (path: string, extra = "", method = "GET") =>
  `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n${extra}\r\n`;

beforeAll(async () => {
  fixture = await startTestMaster("kiln-repo-files-", {
    KILN_MASTER_LEASE: "1h",
    KILN_MASTER_HEARTBEAT: "1s",
  });
  ({ dir, master } = fixture);
  admin = (await createToken(master.ctx.store, { role: "admin", name: "admin" })).secret;
  // tools: private to project alpha, holding a 12 MiB package; open: public; theirs: beta's.
  await api("POST", "/api/v1/repos", { name: "tools", format: "deb", project: "alpha" });
  await api("POST", "/api/v1/repos", { name: "open", format: "deb", public: true });
  await api("POST", "/api/v1/repos", { name: "theirs", format: "deb", project: "beta" });
  const deb = buildDeb({
    control: controlText({ name: "kiln-big", version: "1.0-1", arch: "amd64" }),
    data: [
      { name: "./", type: "5" },
      { name: "./big.bin", data: randomBytes(12 << 20) },
    ],
  });
  const built = await runningJob("alpha", []);
  const sha256 = new Bun.CryptoHasher("sha256").update(deb).digest("hex");
  const put = await fetch(`${master.url}/api/v1/worker/artifacts/${built.id}/1/kiln-big.deb`, {
    method: "PUT",
    headers: {
      authorization: `Bearer ${built.credential}`,
      "x-kiln-sha256": sha256,
      "x-kiln-size": String(deb.length),
    },
    body: deb,
  });
  if (put.status !== 201) throw new Error(`upload: ${put.status} ${await put.text()}`);
  await finishJob(master.ctx.store, built.id, 1, OUTCOME, 0);
  const published = (await api("POST", "/api/v1/repos/tools/publish", { job: built.id })) as {
    added: { path: string }[];
  };
  big = { path: published.added[0]!.path, sha256, size: deb.length };
  job = await runningJob("alpha", ["tools"]);
});

afterAll(async () => {
  for (const p of proxies) p.close();
  await fixture.stop();
});

describe("a job's repositories through its API proxy", () => {
  test("a repository the job uses is read through the proxy: its key, indexes and packages, as the master serves them", async () => {
    const socket = proxyFor(["tools"], job.credential);
    const key = await exchange(socket, get("/repos/tools/key.asc"));
    expect(key.status).toBe(200);
    const direct = await (
      await fetch(`${master.url}/api/v1/repos/tools/key`, {
        headers: { authorization: `Bearer ${admin}` },
      })
    ).text();
    expect(key.body.toString()).toBe(direct);
    expect(key.headers.get("connection")).toBe("close");
    const release = await exchange(socket, get("/repos/tools/dists/stable/InRelease"));
    expect([release.status, release.body.toString()]).toEqual([
      200,
      expect.stringContaining("-----BEGIN PGP SIGNED MESSAGE-----"),
    ]);
    // As apt sends it when http_proxy is set: an absolute URL naming the proxy's own loopback address.
    const viaProxy = await exchange(socket, get("http://127.0.0.1:7070/repos/tools/dists/stable/InRelease"));
    expect(viaProxy.body.toString()).toBe(release.body.toString());
    // HEAD: the length, no body; a range: those bytes; a revalidation: 304.
    const head = await exchange(socket, get(`/repos/tools/${big.path}`, "", "HEAD"));
    expect([head.status, head.headers.get("content-length"), head.body.length]).toEqual([
      200,
      String(big.size),
      0,
    ]);
    const range = await exchange(socket, get(`/repos/tools/${big.path}`, "Range: bytes=0-99\r\n"));
    expect([range.status, range.body.length, range.headers.get("content-range")]).toEqual([
      206,
      100,
      `bytes 0-99/${big.size}`,
    ]);
    const since = await exchange(
      socket,
      get("/repos/tools/key.asc", `If-Modified-Since: ${new Date(Date.now() + 60_000).toUTCString()}\r\n`),
    );
    expect([since.status, since.body.length]).toEqual([304, 0]);
    const missing = await exchange(socket, get("/repos/tools/pool/main/n/nosuch.deb"));
    expect(missing.status).toBe(404);
  });

  test("a 12 MiB package streams whole to a client that reads slowly", async () => {
    const socket = proxyFor(["tools"], job.credential);
    const r = await exchange(socket, get(`/repos/tools/${big.path}`), true);
    expect(r.status).toBe(200);
    expect(r.headers.get("content-length")).toBe(String(big.size));
    expect(r.body.length).toBe(big.size);
    expect(new Bun.CryptoHasher("sha256").update(r.body).digest("hex")).toBe(big.sha256);
  });

  // Each request as written by the job, and what it must get: the proxy answers before the master is asked.
  const ATTACKS: [string, string, number, string][] = [
    [
      "a public repository the job did not name",
      get("/repos/open/dists/stable/InRelease"),
      404,
      "REPO_NOT_USED",
    ],
    ["another project's repository", get("/repos/theirs/key.asc"), 404, "REPO_NOT_USED"],
    ["a repository that does not exist", get("/repos/nosuch/key.asc"), 404, "REPO_NOT_USED"],
    ["../ out of a used repository into another", get("/repos/tools/../open/key.asc"), 400, "INVALID_PATH"],
    ["an encoded ../", get("/repos/tools/%2e%2e/open/key.asc"), 400, "INVALID_PATH"],
    ["an encoded / inside a part", get("/repos/tools/dists/..%2f..%2fopen%2fkey.asc"), 400, "INVALID_PATH"],
    ["a backslash", get("/repos/tools/dists%5c..%5ckey.asc"), 400, "INVALID_PATH"],
    ["an empty part", get("/repos/tools//key.asc"), 400, "INVALID_PATH"],
    ["a name with ..", get("/repos/tools..open/key.asc"), 404, "REPO_NOT_USED"],
    ["a name that climbs", get("/repos/../open/key.asc"), 404, "REPO_NOT_USED"],
    ["an encoded name", get("/repos/%74ools/key.asc"), 404, "REPO_NOT_USED"],
    [
      "an absolute URL to the proxy for another repository",
      get("http://localhost:7070/repos/open/key.asc"),
      404,
      "REPO_NOT_USED",
    ],
    ["a request that is not a read", get("/repos/tools/key.asc", "", "DELETE"), 405, "METHOD_NOT_ALLOWED"],
    [
      "a read with a body",
      get("/repos/tools/key.asc", "Content-Length: 3\r\n").concat("abc"),
      400,
      "INVALID_REQUEST",
    ],
    // Any other host is egress, which this job has none of: the master's repositories are not reached so.
    [
      "an absolute URL to another host",
      get("http://master.invalid:7070/repos/tools/key.asc"),
      403,
      "EGRESS_DENIED",
    ],
  ];
  for (const [what, request, status, code] of ATTACKS) {
    test(`${what} is refused with ${status} ${code}`, async () => {
      const socket = proxyFor(["tools"], job.credential);
      const r = await exchange(socket, request);
      expect([r.status, r.code]).toEqual([status, code]);
    });
  }

  test("a job that names no repository reaches none, even with a credential that could", async () => {
    const socket = proxyFor([], job.credential);
    const r = await exchange(socket, get("/repos/tools/key.asc"));
    expect([r.status, r.code]).toEqual([404, "REPO_NOT_USED"]);
  });

  test("the master refuses a credential for a repository its job did not name, whatever the proxy lets through", async () => {
    // A proxy that would forward "open" (a public repository) with a credential whose job named only tools.
    const socket = proxyFor(["tools", "open"], job.credential);
    const r = await exchange(socket, get("/repos/open/key.asc"));
    expect(r.status).toBe(404);
    // And once the job has ended its credential reads nothing.
    const ended = await runningJob("alpha", ["tools"]);
    await finishJob(master.ctx.store, ended.id, 1, OUTCOME, 0);
    const late = await exchange(proxyFor(["tools"], ended.credential), get("/repos/tools/key.asc"));
    expect([late.status, late.code]).toEqual([401, "JOB_CREDENTIAL_EXPIRED"]);
  });
});

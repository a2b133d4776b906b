import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assignJob, insertJob, markRunning } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { testJob } from "../../store/test-job.ts";
import { createToken } from "../../store/tokens.ts";
import { createApp } from "../app.ts";
import { newJobCredential } from "../job-credential.ts";
import { testContext } from "../test-context.ts";

/*
 * Uploads in chunks that resume by offset, content stored once, and downloads by byte range, in process
 * against a real store and data dir. A "restart" is a second app on the same data dir and store.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;
/** Each job's credential, as the worker holds it: uploads carry the job's own, never a worker token. */
const credentials = new Map<number, string>();
let viewer = "";

const newJob = async () => {
  const row = await insertJob(store, testJob());
  const credential = newJobCredential(row.id);
  await assignJob(store, row.id, "w", "slot-0", 60_000, Date.now(), credential.hash);
  await markRunning(store, row.id, 1, "w", 60_000);
  credentials.set(row.id, credential.secret);
  return row.id;
};

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-uploads-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  app = createApp(testContext(dir, store));
  viewer = (await createToken(store, { role: "viewer", name: "v" })).secret;
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");
const random = (n: number) => crypto.getRandomValues(new Uint8Array(n));
const claim = (job: number, content: Uint8Array, mode = "755") => ({
  authorization: `Bearer ${credentials.get(job)}`,
  "x-kiln-sha256": sha(content),
  "x-kiln-size": String(content.length),
  "x-kiln-mode": mode,
});
const url = (job: number, name: string) => `/api/v1/worker/artifacts/${job}/1/${name}`;
const putAt = (
  job: number,
  name: string,
  content: Uint8Array,
  from: number,
  body: Uint8Array | ReadableStream<Uint8Array>,
  a = app,
) =>
  a.request(url(job, name), {
    method: "PUT",
    headers: { ...claim(job, content), "x-kiln-offset": String(from) },
    body,
  });
const offsetOf = async (job: number, name: string, content: Uint8Array, a = app) =>
  ((await (await a.request(url(job, name), { headers: claim(job, content) })).json()) as { offset: number })
    .offset;
const list = async (job: number) =>
  (await (
    await app.request(`/api/v1/jobs/${job}/artifacts`, { headers: { authorization: `Bearer ${viewer}` } })
  ).json()) as { name: string; sha256: string; kind: string; mode: number }[];
const blobFiles = () =>
  readdirSync(join(dir, "artifacts", "sha256"), { recursive: true, withFileTypes: true }).filter((e) =>
    e.isFile(),
  );

describe("artifact uploads", () => {
  test("an upload goes on from the offset the master holds; the artifact exists only once it is whole", async () => {
    const job = await newJob();
    const content = random(300_000);
    expect((await putAt(job, "a.bin", content, 0, content.slice(0, 100_000))).status).toBe(202);
    expect(await list(job)).toEqual([]);
    // A sender that lost track is told where the master stands, and nothing is written.
    const wrong = await putAt(job, "a.bin", content, 50_000, content.slice(50_000, 60_000));
    expect(wrong.status).toBe(409);
    expect(((await wrong.json()) as { error: { code: string } }).error.code).toBe("UPLOAD_OFFSET");
    expect(await offsetOf(job, "a.bin", content)).toBe(100_000);
    // The master restarts: a new app on the same data dir resumes (and hashes the partial file anew).
    const again = createApp(testContext(dir, store));
    expect((await putAt(job, "a.bin", content, 100_000, content.slice(100_000), again)).status).toBe(201);
    expect(await list(job)).toEqual([
      { name: "a.bin", size: 300_000, sha256: sha(content), kind: "other", mode: 0o755 } as never,
    ]);
    const got = await app.request(`/api/v1/jobs/${job}/artifacts/a.bin`, {
      headers: { authorization: `Bearer ${viewer}` },
    });
    expect(got.headers.get("x-kiln-mode")).toBe("755");
    expect(sha(new Uint8Array(await got.arrayBuffer()))).toBe(sha(content));
    expect(readdirSync(join(dir, "artifacts", "incoming"))).toEqual([]);
  });

  test("a body cut off mid-way keeps the bytes that arrived, and the upload resumes after them", async () => {
    const job = await newJob();
    const content = random(200_000);
    let sent = 0;
    const cut = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= 120_000) return c.error(new Error("connection reset"));
        c.enqueue(content.slice(sent, sent + 40_000));
        sent += 40_000;
      },
    });
    await Promise.resolve(putAt(job, "cut.bin", content, 0, cut)).catch(() => {});
    expect(await offsetOf(job, "cut.bin", content)).toBe(120_000);
    expect(await list(job)).toEqual([]);
    expect((await putAt(job, "cut.bin", content, 120_000, content.slice(120_000))).status).toBe(201);
    expect((await list(job))[0]!.sha256).toBe(sha(content));
  });

  test("content that is not what was claimed is refused, its partial dropped, nothing recorded", async () => {
    const job = await newJob();
    const content = random(10_000);
    const other = random(10_000);
    const res = await putAt(job, "bad.bin", content, 0, other);
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("CHECKSUM_MISMATCH");
    expect(await offsetOf(job, "bad.bin", content)).toBe(0);
    expect(await list(job)).toEqual([]);
    // More bytes than the claimed size are refused too, and cut back to where the request began.
    const long = await putAt(job, "bad.bin", content, 0, new Uint8Array([...content, 1, 2, 3]));
    expect(long.status).toBe(400);
    expect(await offsetOf(job, "bad.bin", content)).toBe(0);
  });

  test("identical content is stored once; its blob goes when the last artifact naming it does", async () => {
    const [a, b] = [await newJob(), await newJob()];
    const content = random(50_000);
    expect((await putAt(a, "x.bin", content, 0, content)).status).toBe(201);
    // The master has the content: the second job's upload needs no byte of it.
    expect(await offsetOf(b, "y.bin", content)).toBe(content.length);
    expect((await putAt(b, "y.bin", content, content.length, new Uint8Array(0))).status).toBe(201);
    expect(blobFiles().length).toBe(1);
    // Job a replaces x.bin: the old content is still job b's, so it stays.
    const next = random(1000);
    expect((await putAt(a, "x.bin", next, 0, next)).status).toBe(201);
    expect(blobFiles().length).toBe(2);
    // Job b replaces y.bin as well: now nothing names the first content, and its blob is deleted.
    expect((await putAt(b, "y.bin", next, 0, next)).status).toBe(201);
    expect(blobFiles().map((f) => f.name)).toEqual([sha(next)]);
  });
});

test("partial uploads of attempts that ended are swept; those of running attempts stay", async () => {
  const [ended, running] = [await newJob(), await newJob()];
  const content = random(100_000);
  const ctx = testContext(dir, store);
  const a = createApp(ctx);
  expect((await putAt(ended, "p.bin", content, 0, content.slice(0, 40_000), a)).status).toBe(202);
  expect((await putAt(running, "p.bin", content, 0, content.slice(0, 40_000), a)).status).toBe(202);
  expect(await ctx.artifacts.sweepIncoming(async (id) => id === running)).toBe(1);
  expect(await offsetOf(ended, "p.bin", content, a)).toBe(0);
  expect(await offsetOf(running, "p.bin", content, a)).toBe(40_000);
});

describe("artifact downloads by range", () => {
  const get = (job: number, headers: Record<string, string>) =>
    app.request(`/api/v1/jobs/${job}/artifacts/r.bin`, {
      headers: { authorization: `Bearer ${viewer}`, ...headers },
    });

  test("ranges get 206 with Content-Range; bad ones 416; ones a server may ignore get the whole", async () => {
    const job = await newJob();
    const content = random(1000);
    expect((await putAt(job, "r.bin", content, 0, content)).status).toBe(201);
    const cases: [string, number, string | null, Uint8Array | null][] = [
      ["bytes=0-9", 206, "bytes 0-9/1000", content.slice(0, 10)],
      ["bytes=990-", 206, "bytes 990-999/1000", content.slice(990)],
      ["bytes=-5", 206, "bytes 995-999/1000", content.slice(995)],
      ["bytes=500-5000", 206, "bytes 500-999/1000", content.slice(500)],
      ["bytes=1000-", 416, "bytes */1000", null],
      ["bytes=-0", 416, "bytes */1000", null],
      ["bytes=0-1,5-6", 200, null, content],
      ["bytes=9-3", 200, null, content],
      ["items=0-3", 200, null, content],
    ];
    for (const [range, status, contentRange, body] of cases) {
      const res = await get(job, { range });
      const seen = [range, res.status, res.headers.get("content-range")];
      expect(seen).toEqual([range, status, contentRange]);
      if (body) expect([range, sha(new Uint8Array(await res.arrayBuffer()))]).toEqual([range, sha(body)]);
      else
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe("RANGE_NOT_SATISFIABLE");
    }
    // If-Range with another version's validator: the whole artifact, never a mixed file.
    const stale = await get(job, { range: "bytes=10-", "if-range": `"${"0".repeat(64)}"` });
    expect(stale.status).toBe(200);
    const fresh = await get(job, { range: "bytes=10-", "if-range": `"${sha(content)}"` });
    expect(fresh.status).toBe(206);
    expect(fresh.headers.get("accept-ranges")).toBe("bytes");
  });
});

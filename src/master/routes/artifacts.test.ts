import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
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
 * The artifact endpoints in process against a real store: `dir/file` names are stored and served, with
 * the "/" raw or encoded, and every name is checked part by part before anything is written.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;
/** The job's own credential, which its worker presents for the uploads. */
let worker = "";
let viewer = "";
let jobId = 0;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-artifacts-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  const ctx = testContext(dir, store);
  app = createApp(ctx);
  viewer = (await createToken(store, { role: "viewer", name: "v" })).secret;
  const row = await insertJob(store, testJob());
  jobId = row.id;
  const credential = newJobCredential(jobId);
  worker = credential.secret;
  await assignJob(store, jobId, "w", "slot-0", 60_000, Date.now(), credential.hash);
  await markRunning(store, jobId, 1, "w", 60_000);
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const put = (name: string, body: string) =>
  app.request(`/api/v1/worker/artifacts/${jobId}/1/${name}`, {
    method: "PUT",
    headers: {
      authorization: `Bearer ${worker}`,
      "x-kiln-sha256": new Bun.CryptoHasher("sha256").update(body).digest("hex"),
      "x-kiln-size": String(Buffer.byteLength(body)),
    },
    body,
  });
const get = (path: string) =>
  app.request(`/api/v1/jobs/${jobId}${path}`, { headers: { authorization: `Bearer ${viewer}` } });

test("a dir/file name is stored and served, whether its slash is sent raw or encoded", async () => {
  expect((await put("d%2Fsub%2Ff.txt", "encoded")).status).toBe(201);
  expect((await put("e/g.txt", "raw")).status).toBe(201);
  expect((await put("top.bin", "top")).status).toBe(201);
  const listed = (await (await get("/artifacts")).json()) as { name: string }[];
  expect(listed.map((a) => a.name)).toEqual(["d/sub/f.txt", "e/g.txt", "top.bin"]);
  const raw = await get("/artifacts/d/sub/f.txt");
  expect(await raw.text()).toBe("encoded");
  expect(raw.headers.get("content-disposition")).toBe('attachment; filename="f.txt"');
  expect(await (await get("/artifacts/e%2Fg.txt")).text()).toBe("raw");
});

test("names that climb, are empty, hidden or hold control characters are refused before anything is stored", async () => {
  for (const bad of ["a%2F..%2Fb", "..%2Fx", "d%2F.hidden", "a%2F%2Fb", "a%09b", "d%2F", "a%5Cb"]) {
    const res = await put(bad, "x");
    expect(`${bad} ${res.status}`).toBe(`${bad} 400`);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("INVALID_NAME");
  }
  // A newline never matches the route, and URL parsing removes a ".." segment: 404, refused all the same.
  expect((await put("a%0Ab", "x")).status).toBe(404);
  expect((await put("%2E%2E", "x")).status).toBe(404);
  expect((await (await get("/artifacts")).json()) as unknown[]).toEqual([]);
  expect((await get("/artifacts/a%2F..%2Fb")).status).toBe(400);
});

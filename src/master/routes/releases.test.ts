import { afterEach, beforeEach, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { assignJob, finishJob, insertJob, markRunning } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { testJob } from "../../store/test-job.ts";
import { createToken } from "../../store/tokens.ts";
import { createApp } from "../app.ts";
import { newJobCredential } from "../job-credential.ts";
import { testContext } from "../test-context.ts";

/*
 * Promotion refusals in process against a real store: a succeeded job whose artifacts were uploaded
 * through the real route, and names that must never become a release's file.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;
let admin = "";
let jobId = 0;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-releases-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  app = createApp(testContext(dir, store));
  admin = (await createToken(store, { role: "admin", name: "a" })).secret;
  const row = await insertJob(store, testJob());
  jobId = row.id;
  // Uploads carry the attempt's own credential, as its worker sends them.
  const credential = newJobCredential(jobId);
  await assignJob(store, jobId, "w", "slot-0", 60_000, Date.now(), credential.hash);
  await markRunning(store, jobId, 1, "w", 60_000);
  for (const name of ["SHA256SUMS", "out/sha256sums", "image.raw"]) {
    const body = `content of ${name}`;
    const res = await app.request(`/api/v1/worker/artifacts/${jobId}/1/${name}`, {
      method: "PUT",
      headers: {
        authorization: `Bearer ${credential.secret}`,
        "x-kiln-sha256": new Bun.CryptoHasher("sha256").update(body).digest("hex"),
        "x-kiln-size": String(body.length),
      },
      body,
    });
    expect(res.status).toBe(201);
  }
  const outcome = {
    state: "succeeded",
    reason: null,
    exitCode: 0,
    message: null,
    peakMemoryBytes: null,
    cpuMs: null,
  } as const;
  expect(await finishJob(store, jobId, 1, outcome, 0)).not.toBeNull();
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const promote = (body: unknown) =>
  app.request("/api/v1/releases", {
    method: "POST",
    headers: { authorization: `Bearer ${admin}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });

test("an artifact named SHA256SUMS, in any case or directory, is refused as a release's file and nothing is written", async () => {
  for (const artifact of ["SHA256SUMS", "out/sha256sums"]) {
    const res = await promote({ job: jobId, artifact, tag: "v1" });
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect([res.status, body.error.code]).toEqual([400, "INVALID_NAME"]);
    expect(body.error.message).toContain("cannot be released");
  }
  expect(existsSync(join(dir, "releases", "v1"))).toBe(false);
  expect((await promote({ job: jobId, artifact: "image.raw", tag: "v1" })).status).toBe(201);
});

test("a tag or artifact name that climbs out is refused as INVALID_NAME, with the value escaped", async () => {
  for (const [tag, artifact] of [
    ["../v2", "image.raw"],
    ["v2", "../image.raw"],
    ["v2\n", "image.raw"],
  ]) {
    const res = await promote({ job: jobId, artifact, tag });
    const body = (await res.json()) as { error: { code: string; message: string } };
    expect([res.status, body.error.code]).toEqual([400, "INVALID_NAME"]);
    expect(body.error.message).not.toContain("\n");
  }
});

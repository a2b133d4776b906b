import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cancelJob, insertJob } from "../../store/jobs.ts";
import { openStore, type Store } from "../../store/open.ts";
import { testJob } from "../../store/test-job.ts";
import { VERSION } from "../../version.ts";
import { createApp } from "../app.ts";
import { testContext } from "../test-context.ts";

/*
 * The endpoints anyone may call (health, readiness, metrics, the OpenAPI document, the front page) and
 * the answers to paths that do not exist, in process against a real store.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-t-public-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  app = createApp(testContext(dir, store));
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const job = () => insertJob(store, testJob());

test("health and readiness answer without a token", async () => {
  const health = await app.request("/healthz");
  expect([health.status, await health.text()]).toEqual([200, "ok\n"]);
  const ready = await app.request("/readyz");
  expect([ready.status, await ready.text()]).toEqual([200, "ready\n"]);
});

test("readiness fails, without showing internals, when the store cannot answer", async () => {
  store.close();
  const res = await app.request("/readyz");
  expect(res.status).toBe(500);
  const body = (await res.json()) as { error: { code: string; message: string } };
  expect(body.error.code).toBe("INTERNAL");
  expect(body.error.message).not.toContain(dir);
  // Reopened so afterEach can close it.
  store = await openStore(`file:${join(dir, "kiln.db")}`);
});

test("metrics count jobs by state and the version, in Prometheus text", async () => {
  await job();
  await job();
  await cancelJob(store, (await job()).id);
  const res = await app.request("/metrics");
  expect(res.headers.get("content-type")).toContain("text/plain; version=0.0.4");
  const text = await res.text();
  expect(text).toContain('kiln_jobs{state="queued"} 2\n');
  expect(text).toContain('kiln_jobs{state="cancelled"} 1\n');
  expect(text).toContain('kiln_jobs{state="running"} 0\n');
  expect(text).toContain("kiln_workers_connected 0\n");
  expect(text).toContain(`kiln_build_info{version="${VERSION}"} 1`);
});

test("the OpenAPI document and the front page are served without a token", async () => {
  const doc = (await (await app.request("/api/v1/openapi.json")).json()) as {
    openapi: string;
    paths: object;
  };
  expect(doc.openapi).toBe("3.1.0");
  expect(Object.keys(doc.paths)).toContain("/api/v1/jobs");
  const page = await app.request("/");
  expect([page.status, page.headers.get("content-type")]).toEqual([200, "text/html; charset=UTF-8"]);
  expect(await page.text()).toContain(`Kiln ${VERSION}`);
});

test("a path that does not exist is a JSON 404 naming it, under /api/v1 too (each route checks its own callers)", async () => {
  const res = await app.request("/nope/../etc/passwd");
  expect(res.status).toBe(404);
  expect(await res.json()).toEqual({
    error: { code: "NOT_FOUND", message: expect.stringContaining("no such endpoint") },
  });
  // The API's paths are public in the OpenAPI document: a 404 tells nobody anything new.
  const api = await app.request("/api/v1/nothing-here");
  expect(api.status).toBe(404);
});

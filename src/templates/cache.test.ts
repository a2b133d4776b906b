import { afterEach, beforeEach, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import type { TemplateSpec } from "../protocol/template.ts";
import type { OpenBuildSandbox } from "./build.ts";
import { createTemplateCache, type TemplateCache } from "./cache.ts";

// Finished trees are laid out on disk as a build leaves them, so the cache is exercised for real without
// a minute-long debootstrap (test/integration/templates.test.ts runs real builds).
let dir: string;
let cache: TemplateCache;
let changes = 0;
const log = createConsola({ level: -1 });
const hash = (c: string) => c.repeat(64);
// These tests never get as far as running a build step (the sandbox tier and the integration tests do):
// a step here is a bug in the test.
const openSandbox: OpenBuildSandbox = async () => ({
  step: () => Promise.reject(new Error("no build steps in the cache's unit tests")),
  close: async () => {},
});

function finished(h: string, name: string, sizeBytes: number, ageS: number) {
  mkdirSync(join(dir, h, "root", "etc"), { recursive: true });
  writeFileSync(
    join(dir, h, "complete.json"),
    JSON.stringify({ hash: h, name, sizeBytes, builtAt: new Date().toISOString() }),
  );
  const t = new Date(Date.now() - ageS * 1000);
  utimesSync(join(dir, h), t, t);
}

const spec = (h: string, name: string): TemplateSpec => ({
  name,
  hash: h,
  base: null,
  recipe: { kind: "tarball", job: 1, artifact: "root.tar", packages: [] },
});

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-cache-"));
  changes = 0;
  cache = createTemplateCache({ dir, budgetBytes: 250, log, changed: () => changes++, openSandbox });
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test("a finished tree is used as it is, and listed", async () => {
  finished(hash("a"), "alpha", 100, 10);
  const got = await cache.acquire(spec(hash("a"), "alpha"));
  expect(got.root).toBe(join(dir, hash("a"), "root"));
  got.release();
  expect(cache.list()).toEqual([{ hash: hash("a"), name: "alpha", sizeBytes: 100 }]);
});

test("a tree without its completion mark is never used and the sweep removes it", async () => {
  finished(hash("a"), "alpha", 100, 10);
  rmSync(join(dir, hash("a"), "complete.json"));
  mkdirSync(join(dir, `${hash("b")}.building`));
  expect(cache.list()).toEqual([]);
  expect(cache.sweep().sort()).toEqual([hash("a"), `${hash("b")}.building`].sort());
  expect(readdirSync(dir)).toEqual([]);
});

test("past its budget the cache evicts least recently used trees that no job holds", async () => {
  finished(hash("a"), "oldest", 100, 300);
  finished(hash("b"), "older", 100, 200);
  finished(hash("c"), "newest", 100, 100);
  const held = await cache.acquire(spec(hash("a"), "oldest"));
  // "oldest" is now the most recently used and held, so "older" goes first.
  expect(cache.evict()).toEqual([hash("b")]);
  expect(changes).toBe(1);
  held.release();
  finished(hash("d"), "fourth", 100, 0);
  expect(cache.evict()).toEqual([hash("c")]);
  expect(
    cache
      .list()
      .map((c) => c.name)
      .sort(),
  ).toEqual(["fourth", "oldest"]);
});

test("a failed build is not cached and every waiter gets the failure", async () => {
  const s = spec(hash("e"), "broken");
  const results = await Promise.allSettled([cache.acquire(s), cache.acquire(s)]);
  for (const r of results) {
    expect(r.status).toBe("rejected");
    expect(String((r as PromiseRejectedResult).reason.message)).toContain("building template broken failed");
  }
  // No tree is left, but the log the message points to is, under failed/, and the sweep keeps it.
  expect(readdirSync(dir)).toEqual(["failed"]);
  const message = String(((results[0] as PromiseRejectedResult).reason as Error).message);
  const kept = /the whole build log is kept at (\S+)$/.exec(message)?.[1];
  expect(kept).toBe(join(dir, "failed", `broken-${hash("e").slice(0, 12)}.log`));
  expect(readFileSync(kept!, "utf8")).toContain("--- kiln: building template broken");
  expect(cache.sweep()).toEqual([]);
  expect(existsSync(kept!)).toBe(true);
});

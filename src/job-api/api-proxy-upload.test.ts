import { afterEach, beforeEach, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createArtifactBudget } from "../runner/artifact-budget.ts";
import { startApiProxy } from "./api-proxy.ts";

/*
 * `kiln job upload` through the real API proxy on a Unix socket: dir/file names, names that climb, and
 * the artifact budget, which refuses an upload before a byte of it is written and still lets the client
 * read why.
 */

let dir: string;
let proxy: { close(): void };
const budget = createArtifactBudget(8 << 20);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-upload-"));
  proxy = startApiProxy(join(dir, "api.sock"), {
    jobId: 1,
    attempt: 1,
    egress: [],
    outDir: join(dir, "job", "out"),
    artifacts: budget,
    progress() {},
    markBroken() {},
    template: async () => "",
    repoVersion: async () => ({ version: "" }),
  });
});
afterEach(() => {
  proxy.close();
  rmSync(dir, { recursive: true, force: true });
});

const upload = async (name: string, bytes: number) => {
  const res = await fetch(`http://kiln/v1/upload?name=${encodeURIComponent(name)}`, {
    method: "POST",
    unix: join(dir, "api.sock"),
    headers: { "content-length": String(bytes) },
    body: new Uint8Array(bytes).fill(120),
  });
  return { status: res.status, body: (await res.json()) as { error?: { code: string; message: string } } };
};

test("uploads past the job's artifact budget are refused with a reason the client reads, and never written", async () => {
  expect((await upload("f1.bin", 3 << 20)).status).toBe(201);
  expect((await upload("f2.bin", 3 << 20)).status).toBe(201);
  const refused = await upload("f3.bin", 3 << 20);
  expect(refused.status).toBe(413);
  expect(refused.body.error).toEqual({
    code: "ARTIFACT_BUDGET",
    message:
      "artifact f3.bin (3 MiB) passes this job's artifact budget of 8 MiB (worker.artifact_budget); it was not kept",
  });
  expect((await upload("f4.bin", 5 << 20)).status).toBe(413);
  expect((await upload("small/d.txt", 1000)).status).toBe(201);
  expect(readdirSync(join(dir, "job", "out")).sort()).toEqual(["f1.bin", "f2.bin", "small"]);
  expect(readFileSync(join(dir, "job", "out", "small", "d.txt")).length).toBe(1000);
  expect(budget.message()).toContain("f3.bin");
});

test("names that climb or hold control characters are refused and nothing lands outside the out dir", async () => {
  for (const name of ["../escape.txt", "d/../../e.txt", "/etc/x", "a\tb", ".hidden", "d//f"]) {
    const r = await upload(name, 10);
    expect(`${name} ${r.status} ${r.body.error?.code}`).toBe(`${name} 400 INVALID_NAME`);
    expect(r.body.error?.message).toContain("is not an artifact name");
  }
  expect(existsSync(join(dir, "escape.txt")) || existsSync(join(dir, "e.txt"))).toBe(false);
  expect(existsSync(join(dir, "job", "out"))).toBe(false);
});

test("a name that collides with a file or directory already uploaded is refused, and the proxy keeps serving", async () => {
  expect((await upload("x", 10)).status).toBe(201);
  expect((await upload("d/f", 10)).status).toBe(201);
  for (const name of ["x/y", "d"]) {
    const r = await upload(name, 10);
    expect(`${name} ${r.status} ${r.body.error?.code}`).toBe(`${name} 409 ARTIFACT_EXISTS`);
  }
  expect((await upload("after.txt", 10)).status).toBe(201);
});

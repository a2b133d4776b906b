import { afterAll, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import S3rver from "s3rver";
import {
  checkLeftoversAfterEachTest,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * The master with `[storage] backend = "s3"`, against s3rver (a local S3 implementation) on loopback that
 * this test starts and stops. Blobs land in the bucket, not the data dir; downloads, whole and by range,
 * stream from the bucket through the master's own access checks.
 */

const dir = tempDir("kiln-s3-", "/var/tmp");
const MiB = 2 ** 20;
const bucketDir = join(dir.path, "s3");
const s3 = new S3rver({
  port: 0,
  address: "127.0.0.1",
  silent: true,
  directory: bucketDir,
  configureBuckets: [{ name: "kiln-artifacts", configs: [] }],
});
const { port } = await s3.run();

afterAll(async () => {
  await stopAll();
  await s3.close();
  dir[Symbol.dispose]();
});

test("with an S3 store, artifacts go to the bucket in parts and come back whole and by range", async () => {
  const m = await startMaster(dir.path, {
    env: {
      KILN_STORAGE_BACKEND: "s3",
      KILN_STORAGE_S3_ENDPOINT: `http://127.0.0.1:${port}`,
      KILN_STORAGE_S3_BUCKET: "kiln-artifacts",
      KILN_STORAGE_S3_ACCESS_KEY_ID: "S3RVER",
      KILN_STORAGE_S3_SECRET_ACCESS_KEY: "S3RVER",
      KILN_STORAGE_S3_PREFIX: "farm-a/",
    },
  });
  await startWorker(m, dir.path, "a-s3", { env: { KILN_WORKER_RUNNER: "process" } });
  // 20 MiB: three multipart parts of 8 MiB; the same bytes twice under two names are stored once.
  const id = await submitJob(m, {
    command: [
      "sh",
      "-c",
      'head -c 20M /dev/urandom > "$KILN_OUT/big.bin" && cp "$KILN_OUT/big.bin" "$KILN_OUT/copy.bin" && echo hi > "$KILN_OUT/small.txt"',
    ],
  });
  expect((await waitJob(m, id, 90_000)).state).toBe("succeeded");
  const arts = (
    await m.api<{ name: string; sha256: string; size: number }[]>("GET", `/api/v1/jobs/${id}/artifacts`)
  ).body;
  expect(arts.map((a) => [a.name, a.size])).toEqual([
    ["big.bin", 20 * MiB],
    ["copy.bin", 20 * MiB],
    ["small.txt", 3],
  ]);
  const big = arts[0]!;
  // In the bucket under the prefix, once per content; nothing in the data dir's blob tree.
  const keys = readdirSync(join(bucketDir, "kiln-artifacts"), { recursive: true }).map(String);
  expect(keys.filter((k) => k.endsWith("._S3rver_object") && k.includes(big.sha256)).length).toBe(1);
  // Every object is under the prefix (s3rver keeps its multipart scratch in a folder of its own).
  const objects = keys.filter((k) => k.endsWith("._S3rver_object"));
  expect(objects.length).toBe(2);
  expect(objects.every((k) => k.startsWith("farm-a/sha256/"))).toBe(true);
  expect(existsSync(join(m.data, "artifacts", "sha256"))).toBe(false);

  const got = await m.cli(["download", String(id), "big.bin", "-o", join(dir.path, "big.bin")]);
  expect(got.code).toBe(0);
  const h = new Bun.CryptoHasher("sha256");
  for await (const c of Bun.file(join(dir.path, "big.bin")).stream()) h.update(c);
  expect(h.digest("hex")).toBe(big.sha256);
  const part = await fetch(`${m.url}/api/v1/jobs/${id}/artifacts/big.bin`, {
    headers: { authorization: `Bearer ${m.token}`, range: `bytes=${10 * MiB}-${10 * MiB + 9}` },
  });
  expect(part.status).toBe(206);
  expect(part.headers.get("content-range")).toBe(`bytes ${10 * MiB}-${10 * MiB + 9}/${20 * MiB}`);
  const whole = new Uint8Array(await Bun.file(join(dir.path, "big.bin")).arrayBuffer());
  expect(new Uint8Array(await part.arrayBuffer())).toEqual(whole.slice(10 * MiB, 10 * MiB + 10));
  // A download never hands out the bucket: the master streams it, no redirect.
  const plain = await fetch(`${m.url}/api/v1/jobs/${id}/artifacts/small.txt`, {
    headers: { authorization: `Bearer ${m.token}` },
    redirect: "manual",
  });
  expect([plain.status, await plain.text()]).toEqual([200, "hi\n"]);
  await m.kill("SIGTERM");
}, 120_000);

test("an S3 backend without a bucket is refused at start, naming the key to set", async () => {
  const d = join(dir.path, "nobucket");
  const r = Bun.spawnSync(
    [join(import.meta.dir, "..", "..", "dist", "kiln"), "master", "--data", d, "--listen", "127.0.0.1:0"],
    {
      env: {
        PATH: "/usr/bin:/bin",
        KILN_STORAGE_BACKEND: "s3",
        KILN_STORAGE_S3_ENDPOINT: `http://127.0.0.1:${port}`,
      },
      stderr: "pipe",
    },
  );
  expect(r.exitCode).not.toBe(0);
  expect(r.stderr.toString()).toContain("storage.s3_bucket is empty");
});

import { afterAll, expect, test } from "bun:test";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";
import { peakGrowth, startPeak } from "../rss.ts";

checkLeftoversAfterEachTest();

/*
 * A 2 GiB artifact through the compiled binary, master and worker in processes of their own: the bytes
 * are read, hashed, sent in chunks, hashed again by the master and by the downloading client, and none of
 * the three grows by more than 64 MiB on the way. (The file is sparse so the job makes it at once; every
 * byte of it still travels.) scripts/bench artifacts measures the same path against cp and curl.
 */

const dir = tempDir("kiln-artifacts-mem-", "/var/tmp");
const MiB = 2 ** 20;
const LIMIT = 64 * MiB;

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

test("a 2 GiB artifact grows neither the master, the worker nor the downloading client by more than 64 MiB", async () => {
  const m = await startMaster(dir.path);
  const w = await startWorker(m, dir.path, "a-mem", { env: { KILN_WORKER_RUNNER: "process" } });
  // A first job with an artifact loads every code path, so what follows measures the size alone.
  const warm = await submitJob(m, { command: ["sh", "-c", 'head -c 20M /dev/urandom > "$KILN_OUT/warm"'] });
  expect((await waitJob(m, warm, 60_000)).state).toBe("succeeded");
  const masterBase = startPeak(m.proc.pid);
  const workerBase = startPeak(w.proc.pid);

  const id = await submitJob(m, {
    command: [
      "sh",
      "-c",
      'head -c 1M /dev/urandom > "$KILN_OUT/disk.img" && truncate -s 2G "$KILN_OUT/disk.img"',
    ],
  });
  expect((await waitJob(m, id, 600_000)).state).toBe("succeeded");
  const uploadMaster = peakGrowth(m.proc.pid, masterBase);
  const uploadWorker = peakGrowth(w.proc.pid, workerBase);

  const downloadBase = startPeak(m.proc.pid);
  const run = async (args: string[]) => {
    const p = Bun.spawn([join(import.meta.dir, "..", "..", "dist", "kiln"), ...args], {
      env: { PATH: "/usr/bin:/bin", KILN_URL: m.url, KILN_TOKEN: m.token },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
    // Bun reports the peak resident set of the finished child in bytes.
    return { code, err, peak: p.resourceUsage()?.maxRSS ?? 0 };
  };
  const got = await run(["download", String(id), "disk.img", "-o", join(dir.path, "disk.img")]);
  expect([got.code, got.err]).toEqual([0, expect.stringContaining("2 GiB, sha256")]);
  const downloadMaster = peakGrowth(m.proc.pid, downloadBase);
  // The client starts from nothing: its growth is its peak beyond that of a small request's.
  const small = await run(["artifacts", String(id)]);
  expect(small.code).toBe(0);

  const growth = {
    masterUpload: uploadMaster,
    workerUpload: uploadWorker,
    masterDownload: downloadMaster,
    client: got.peak - small.peak,
  };
  console.error(
    `2 GiB artifact: growth in MiB ${JSON.stringify(Object.fromEntries(Object.entries(growth).map(([k, v]) => [k, Math.round(v / MiB)])))}`,
  );
  for (const [what, bytes] of Object.entries(growth)) expect([what, bytes < LIMIT]).toEqual([what, true]);
}, 900_000);

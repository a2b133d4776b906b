import { afterAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  startWorker,
  stopAll,
  tempDir,
  waitFor,
} from "../harness.ts";
import { seedQueuedJobs } from "../seed.ts";

checkLeftoversAfterEachTest();

/*
 * A queue that holds a large backlog no worker can serve (an everyday state: an architecture or channel
 * whose workers are offline) must not cost the jobs that can run: a dispatch pass reads what the free
 * slots can take, never the whole queue. scripts/bench backlog measures the latency and CPU side.
 */

const BACKLOG = 100_000;
const dir = tempDir();
let m: Master;

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

const privateRss = (pid: number) =>
  Number(/RssAnon:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;

test("100,000 jobs waiting for an unserved channel neither slow nor grow the master, and run once served", async () => {
  // The backlog is written into the store before the master starts, as a master restarted with it would
  // find it.
  await seedQueuedJobs(join(dir.path, "data"), BACKLOG, { channel: "offline", priority: 5 });

  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "e-backlog", KILN_WORKER_RUNNER: "process" },
  });
  await waitFor(
    "the local worker",
    async () => (await m.api<{ connected: boolean }[]>("GET", "/api/v1/workers")).body[0]?.connected,
  );
  const idle = privateRss(m.proc.pid);
  // Higher-priority jobs on another channel must not stand in the way of the jobs the slots can run.
  for (let i = 0; i < 20; i++) {
    const r = await m.cli(["submit", "--wait", "--", "sh", "-c", `echo run ${i}`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`run ${i}\n`);
  }
  const after = privateRss(m.proc.pid);
  // Reading the backlog into memory (what a pass over the whole queue did) would take hundreds of MB.
  expect(after - idle).toBeLessThan(64 * 2 ** 20);
  const queued = await m.api<unknown[]>("GET", "/api/v1/jobs?state=queued&limit=1000");
  expect(queued.body.length).toBe(1000);

  // A worker that serves the channel takes the backlog in FIFO order.
  await startWorker(m, dir.path, "e-offline", {
    channels: "offline",
    capacity: 4,
    env: { KILN_WORKER_RUNNER: "process" },
  });
  const done = await waitFor("backlog jobs to run", async () => {
    const r = await m.api<{ id: number; name: string }[]>("GET", "/api/v1/jobs?state=succeeded&limit=1000");
    const backlog = r.body.filter((j) => j.name.startsWith("waiting "));
    return backlog.length >= 8 ? backlog : null;
  });
  const firsts = done
    .map((j) => j.id)
    .sort((a, b) => a - b)
    .slice(0, 4);
  expect(firsts).toEqual([1, 2, 3, 4]);
}, 120_000);

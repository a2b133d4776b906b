import { afterAll, afterEach, expect, test } from "bun:test";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  kiln,
  type Master,
  pidsMatching,
  readAll,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  TERMINAL,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

// Short leases so a silent worker is noticed in a couple of seconds.
const FAST = { KILN_MASTER_LEASE: "2s", KILN_MASTER_HEARTBEAT: "300ms" };
// The plain-process runner, whose orphans outlive a killed worker: what its restart sweep is for. (The
// sandbox runner's jobs die with the worker; test/integration/sandbox.test.ts covers that.)
const PLAIN = { ...FAST, KILN_WORKER_RUNNER: "process" };
const dirs: { [Symbol.dispose](): void }[] = [];
const dir = () => {
  const d = tempDir();
  dirs.push(d);
  return d.path;
};

afterEach(async () => {
  await stopAll();
});
afterAll(() => {
  for (const d of dirs) d[Symbol.dispose]();
});

async function events(m: Master, id: number) {
  return (await m.api<{ state: string; attempt: number }[]>("GET", `/api/v1/jobs/${id}/events`)).body;
}

test("a job whose worker dies is re-queued once its lease expires and runs elsewhere", async () => {
  const d = dir();
  const m = await startMaster(d, { env: FAST });
  const a = await startWorker(m, d, "doomed", { capacity: 1, env: PLAIN });
  const marker = `kiln-lease-${process.pid}-${Date.now()}`;
  const id = await submitJob(m, {
    command: [
      "sh",
      "-c",
      `echo attempt $KILN_ATTEMPT; if [ $KILN_ATTEMPT = 1 ]; then exec sh -c "sleep 300; :" ${marker}; fi`,
    ],
    retries: 1,
  });
  await waitFor(
    "the first attempt's output",
    async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.logSize > 0,
  );
  await a.kill("SIGKILL");
  await startWorker(m, d, "rescuer", { capacity: 1, env: FAST });
  const job = await waitJob(m, id);
  expect(job).toMatchObject({ state: "succeeded", attempt: 2, worker: "rescuer" });
  const log = (await m.cli(["logs", String(id)])).stdout;
  expect(log).toStartWith("attempt 1\n");
  expect(log).toContain("attempt 1 lost (worker doomed stopped heartbeating); retrying as attempt 2");
  expect(log).toEndWith("attempt 2\n");
  const terminal = (await events(m, id)).filter((e) => TERMINAL.includes(e.state));
  expect(terminal.length).toBe(1);

  // The killed worker's job process outlived it (the plain runner cannot stop that); restarting the
  // worker on the same data dir sweeps it.
  expect(pidsMatching(marker).length).toBe(1);
  await startWorker(m, d, "doomed", { capacity: 1, env: PLAIN });
  await waitFor("the sweep to kill the orphan", () => pidsMatching(marker).length === 0);
}, 60_000);

test("a job whose worker dies with no retries left ends failed with reason lost", async () => {
  const d = dir();
  const m = await startMaster(d, { env: FAST });
  const w = await startWorker(m, d, "w", { capacity: 1, env: PLAIN });
  // A duration no other test uses, so the orphan is found by its own command line.
  const nap = `300.${Date.now() % 1_000_000}`;
  const id = await submitJob(m, { command: ["sleep", nap], retries: 0 });
  await waitFor(
    "the job to run",
    async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state === "running",
  );
  await w.kill("SIGKILL");
  const job = await waitJob(m, id);
  expect([job.state, job.reason]).toEqual(["failed", "lost"]);
  // Restarting the worker sweeps the orphan and the master does not hand the job out again.
  await startWorker(m, d, "w", { capacity: 1, env: PLAIN });
  await waitFor(
    "the orphan sleep to go",
    () => Bun.spawnSync(["pgrep", "-x", "-f", `sleep ${nap}`]).exitCode === 1,
  );
  expect((await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state).toBe("failed");
}, 60_000);

test("kill -9 of the master at any moment loses no job and never records a second terminal state", async () => {
  const d = dir();
  const port = (await import("../harness.ts")).freePort();
  let m = await startMaster(d, { port });
  await startWorker(m, d, "w1", { capacity: 2 });
  await startWorker(m, d, "w2", { capacity: 2 });
  const ids: number[] = [];
  for (let i = 0; i < 40; i++)
    ids.push(await submitJob(m, { command: ["sh", "-c", `sleep 0.0${i % 10}; echo done-${i}`] }));
  for (let round = 0; round < 4; round++) {
    // Not a wait: the kill lands at a different moment of the jobs' lives each round, which is the test.
    await Bun.sleep(150 + round * 97);
    await m.kill("SIGKILL");
    // Submit through a dead master fails cleanly; nothing is half-written.
    const down = await kiln(["submit", "--", "true"], {
      cwd: d,
      env: { KILN_URL: m.url, KILN_TOKEN: m.token },
    });
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("cannot reach the master");
    m = await startMaster(d, { port, name: `master-${round}` });
  }
  const jobs = await Promise.all(ids.map((id) => waitJob(m, id, 60_000)));
  expect(jobs.map((j) => j.state)).toEqual(ids.map(() => "succeeded"));
  for (const [i, id] of ids.entries()) {
    const terminal = (await events(m, id)).filter((e) => TERMINAL.includes(e.state));
    expect(terminal.length).toBe(1);
    // An attempt lost to a crash (assigned in the store, never delivered) leaves a marker line; the job's
    // own output must still be there exactly once.
    const out = (await m.cli(["logs", String(id)])).stdout;
    expect(out.split("\n").filter((l) => l !== "" && !l.startsWith("--- kiln: attempt"))).toEqual([
      `done-${i}`,
    ]);
  }
}, 120_000);

test("queued jobs survive kill -9 of the master and run once a worker comes", async () => {
  const d = dir();
  const port = (await import("../harness.ts")).freePort();
  let m = await startMaster(d, { port });
  const ids = await Promise.all(
    [1, 2, 3, 4, 5].map((i) => submitJob(m, { command: ["sh", "-c", `echo q${i}`] })),
  );
  await m.kill("SIGKILL");
  m = await startMaster(d, { port, name: "master-again" });
  for (const id of ids) expect((await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state).toBe("queued");
  await startWorker(m, d, "late", { capacity: 2 });
  for (const id of ids) expect((await waitJob(m, id)).state).toBe("succeeded");
}, 60_000);

test("logs -f survives a master restart without losing or repeating a byte", async () => {
  const d = dir();
  const port = (await import("../harness.ts")).freePort();
  let m = await startMaster(d, { port });
  await startWorker(m, d, "w", { capacity: 1 });
  const id = await submitJob(m, {
    command: ["sh", "-c", "for i in $(seq 1 60); do echo line-$i; sleep 0.03; done"],
  });
  const follower = Bun.spawn([(await import("../harness.ts")).KILN, "logs", "-f", String(id)], {
    cwd: d,
    env: { PATH: process.env.PATH!, KILN_URL: m.url, KILN_TOKEN: m.token },
    stdout: "pipe",
    stderr: "pipe",
  });
  const err = readAll(follower.stderr);
  await waitFor(
    "some lines",
    async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.logSize > 60,
  );
  await m.kill("SIGKILL");
  // The master comes back only once the follower has seen it gone, so the reconnect is what is tested.
  await waitFor("the follower to notice the master is gone", () => err.text().includes("reconnecting"));
  m = await startMaster(d, { port, name: "master-again" });
  const [out, code] = await Promise.all([new Response(follower.stdout).text(), follower.exited]);
  await err.done;
  expect([code, err.text()]).toEqual([0, expect.stringContaining("reconnecting")]);
  const expected = Array.from({ length: 60 }, (_, i) => `line-${i + 1}\n`).join("");
  expect(out).toBe(expected);
}, 60_000);

test("many followers of one job all get the whole log", async () => {
  const d = dir();
  const m = await startMaster(d, { role: "up" });
  const id = await submitJob(m, {
    command: ["sh", "-c", "for i in $(seq 1 200); do echo row-$i; done; sleep 0.5; echo end"],
  });
  const readers = Array.from({ length: 25 }, () => m.cli(["logs", "-f", String(id)]));
  const outs = await Promise.all(readers);
  const expected = `${Array.from({ length: 200 }, (_, i) => `row-${i + 1}\n`).join("")}end\n`;
  for (const o of outs) expect(o.stdout).toBe(expected);
}, 60_000);

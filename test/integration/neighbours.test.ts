import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  KILN,
  type Master,
  readAll,
  spawnRole,
  startMaster,
  startWorker,
  stopAll,
  subDir,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Neighbours and operator mistakes: a second master on a data dir, a second worker with a name in use,
 * two `kiln up` on one host, a wrong token, an unreachable master, an invalid name, a stop while jobs
 * run. Each is refused or handled, and said once at the default level with what to do.
 */

const root = process.getuid?.() === 0;
const dir = tempDir("kiln-neighbours-", "/var/tmp");
chmodSync(dir.path, 0o755);

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

const sub = (name: string) => subDir(dir.path, name);

const exited = async (role: { proc: { exited: Promise<number> } }) => role.proc.exited;

describe("neighbours on one host", () => {
  let m: Master;

  test("a second master on the same data dir refuses to start and names the first", async () => {
    m = await startMaster(dir.path, { name: "m1" });
    const second = spawnRole(["master", "--data", m.data, "--listen", "127.0.0.1:0"], {
      cwd: dir.path,
      name: "m2",
    });
    expect(await exited(second)).not.toBe(0);
    expect(second.log()).toMatch(
      new RegExp(
        `data dir ${m.data} is in use by kiln master \\(pid ${m.proc.pid}, listening on 127\\.0\\.0\\.1:\\d+\\)`,
      ),
    );
    expect((await fetch(`${m.url}/readyz`)).ok).toBe(true);
  });

  test.skipIf(!root)(
    "a second worker with a name in use refuses to start, and the first one's job lives on",
    async () => {
      await startWorker(m, dir.path, "e-same", { capacity: 1 });
      const id = await submitJob(m, { command: ["sh", "-c", "sleep 3; echo survived"] });
      await waitFor(
        "the job to run",
        async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state === "running",
      );
      const second = spawnRole(
        [
          "worker",
          "--master",
          m.url,
          "--join",
          await m.workerToken(),
          "--name",
          "e-same",
          "--data",
          join(dir.path, "other-data"),
        ],
        { cwd: dir.path, name: "worker-e-same-2" },
      );
      expect(await exited(second)).not.toBe(0);
      expect(second.log()).toMatch(
        /worker name e-same is in use on this host by kiln worker e-same \(pid \d+/,
      );
      const job = await waitJob(m, id);
      expect(job).toMatchObject({ state: "succeeded", attempt: 1 });
    },
  );

  test.skipIf(!root)(
    "two kiln up with their own data dirs run side by side without touching each other's jobs",
    async () => {
      const a = await startMaster(sub("a"), { role: "up", name: "up-a" });
      const runs = join(dir.path, "a-ran");
      const id = await submitJob(a, { command: ["sh", "-c", "sleep 4; echo a-done"] });
      await waitFor(
        "a's job to run",
        async () => (await a.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state === "running",
      );
      const b = await startMaster(sub("b"), { role: "up", name: "up-b" });
      const workers = async (x: Master) =>
        (await x.api<{ name: string }[]>("GET", "/api/v1/workers")).body.map((w) => w.name);
      await waitFor("b's worker", async () => (await workers(b)).length === 1);
      expect(await workers(a)).not.toEqual(await workers(b));
      const other = await submitJob(b, { command: ["sh", "-c", `echo b-done > /dev/null; echo ok`] });
      expect((await waitJob(b, other)).state).toBe("succeeded");
      expect(await waitJob(a, id)).toMatchObject({ state: "succeeded", attempt: 1 });
      expect(existsSync(runs)).toBe(false);
      await b.kill("SIGTERM");
      await a.kill("SIGTERM");
    },
  );
});

describe("a worker says what is wrong", () => {
  let m: Master;

  test("a refused token is said once at the default level, with what to do", async () => {
    m = await startMaster(sub("m3"), { name: "m3" });
    // The worker reaches the master through a counting proxy, so the test can see it try again.
    let requests = 0;
    const proxy = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(req) {
        requests++;
        const url = new URL(req.url);
        return fetch(`${m.url}${url.pathname}`, {
          headers: { authorization: req.headers.get("authorization") ?? "" },
        });
      },
    });
    try {
      const w = spawnRole(
        [
          "worker",
          "--master",
          `http://127.0.0.1:${proxy.port}`,
          "--join",
          "kiln_wrong",
          "--name",
          "e-wrong",
          "--data",
          join(dir.path, "wrong"),
        ],
        {
          cwd: dir.path,
          name: "worker-e-wrong",
          env: { KILN_WORKER_RUNNER: "process" },
        },
      );
      await waitFor("the refusal in the log", () => w.log().includes("refused this worker's token"));
      // Each try is a websocket request and a diagnosing one: three tries means two after the first word.
      await waitFor("the worker to try twice more", () => requests >= 6);
      expect(w.log().match(/refused this worker's token \(401\)/g)?.length).toBe(1);
      expect(w.log()).toContain("kiln token create --role worker");
      await w.kill("SIGTERM");
    } finally {
      proxy.stop(true);
    }
  });

  test.skipIf(!root)(
    "a second worker with a connected worker's name, from elsewhere, is refused by the master without flapping",
    async () => {
      const first = await startWorker(m, dir.path, "e-twin", {
        capacity: 1,
        env: { KILN_WORKER_RUNNER: "process" },
      });
      // Another user's worker has its own host lock dir: only the master can see the clash, as with a
      // worker of the same name on another host.
      const data = sub("twin-data");
      chmodSync(data, 0o777);
      const twin = Bun.spawn(
        [
          "setpriv",
          "--reuid=65534",
          "--regid=65534",
          "--clear-groups",
          "--",
          KILN,
          "worker",
          "--master",
          m.url,
          "--join",
          await m.workerToken(),
          "--name",
          "e-twin",
          "--data",
          data,
        ],
        {
          env: {
            PATH: process.env.PATH!,
            KILN_WORKER_RUNNER: "process",
            KILN_LOG_FORMAT: "json",
            HOME: data,
          },
          stdout: "pipe",
          stderr: "pipe",
        },
      );
      const out = readAll(twin.stderr);
      const refusal = "worker name e-twin is in use by another connected worker";
      await waitFor("the master to refuse the twin", () =>
        m.log().includes("refused a second worker named e-twin"),
      );
      await waitFor("the twin to say it was refused", () => out.text().includes(refusal));
      twin.kill("SIGTERM");
      const said = await out.done;
      expect(said.split(refusal).length - 1).toBe(1);
      // The first one kept its connection all along: the master never replaced it with the twin.
      expect(m.log()).not.toContain("worker e-twin connected again");
      expect(first.log()).not.toContain("lost the master");
      expect(m.log().match(/refused a second worker named e-twin/g)?.length ?? 0).toBeLessThan(6);
      await first.kill("SIGTERM");
    },
  );

  test("an unreachable master is said once", async () => {
    const w = spawnRole(
      [
        "worker",
        "--master",
        "http://127.0.0.1:1",
        "--join",
        "x",
        "--name",
        "e-alone",
        "--data",
        join(dir.path, "alone"),
      ],
      {
        cwd: dir.path,
        name: "worker-e-alone",
        env: { KILN_WORKER_RUNNER: "process" },
      },
    );
    await waitFor("the complaint in the log", () =>
      w.log().includes("cannot reach the master at http://127.0.0.1:1"),
    );
    // Not a wait for something: nothing answers at port 1, so there is no try to count. The worker
    // retries at 100 ms doubling; 2 s hold four tries or more, and the log must still say it once.
    await Bun.sleep(2000);
    expect(w.log().match(/cannot reach the master/g)?.length).toBe(1);
    await w.kill("SIGTERM");
  });

  test("an invalid name or channel is refused at start, with the rule", async () => {
    for (const [flag, value, said] of [
      ["--name", "BuildHost-1", 'worker name "BuildHost-1" is not a valid name'],
      ["--channels", "Alpha", 'channel "Alpha" is not a valid name'],
    ] as const) {
      const w = spawnRole(
        [
          "worker",
          "--master",
          m.url,
          "--join",
          await m.workerToken(),
          flag,
          value,
          "--data",
          join(dir.path, "bad"),
        ],
        {
          cwd: dir.path,
          name: `worker-bad-${value}`,
          env: { KILN_WORKER_RUNNER: "process" },
        },
      );
      expect(await exited(w)).toBe(2);
      expect(w.log()).toContain(said);
    }
  });

  test("kiln up's own worker joins with the master's token, whatever KILN_TOKEN says", async () => {
    const u = await startMaster(sub("u"), {
      role: "up",
      name: "up-u",
      env: { KILN_TOKEN: "kiln_for_another_master", KILN_WORKER_RUNNER: "process" },
    });
    await waitFor(
      "the local worker",
      async () => (await u.api<{ connected: boolean }[]>("GET", "/api/v1/workers")).body[0]?.connected,
    );
    await u.kill("SIGTERM");
  });

  test("a worker stopped with SIGTERM has its job re-queued at once, long before the lease", async () => {
    const w = await startWorker(m, dir.path, "e-term", {
      capacity: 1,
      env: { KILN_WORKER_RUNNER: "process" },
    });
    const id = await submitJob(m, { command: ["sh", "-c", "sleep 600"], retries: 1 });
    await waitFor(
      "the job to run",
      async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state === "running",
    );
    await w.kill("SIGTERM");
    // The lease is 30 s; the condition is met by the worker's word, not by its expiry.
    const back = await waitFor(
      "the job to be re-queued",
      async () => {
        const j = (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body;
        return j.attempt === 2 ? j : null;
      },
      10_000,
    );
    expect(back.state).not.toBe("failed");
    expect(m.log()).toContain(`job ${id}: attempt 1 lost (worker e-term stopped)`);
    await m.api("POST", `/api/v1/jobs/${id}/cancel`);
  });

  test("a drained worker stopped with SIGTERM finishes its job first", async () => {
    const w = await startWorker(m, dir.path, "e-drain", {
      capacity: 1,
      env: { KILN_WORKER_RUNNER: "process" },
    });
    const id = await submitJob(m, { command: ["sh", "-c", "sleep 2; echo finished"] });
    await waitFor(
      "the job to run",
      async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state === "running",
    );
    expect((await m.cli(["drain", "e-drain"])).code).toBe(0);
    await w.kill("SIGTERM");
    expect(w.log()).toContain("draining: waiting for 1 running job(s)");
    expect(await waitJob(m, id)).toMatchObject({ state: "succeeded", attempt: 1 });
  });
});

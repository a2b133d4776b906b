import { afterAll, describe, expect, test } from "bun:test";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  type Master,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

describe("one machine with kiln up", () => {
  const dir = tempDir();
  let m: Master;

  test("kiln up starts a master and a local worker", async () => {
    m = await startMaster(dir.path, {
      role: "up",
      name: "up",
      env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "local" },
    });
    await waitFor(
      "the local worker",
      async () => (await m.api<{ connected: boolean }[]>("GET", "/api/v1/workers")).body[0]?.connected,
    );
  });

  test("submit --wait prints the log and exits with the job's exit status", async () => {
    const ok = await m.cli(["submit", "--wait", "--", "sh", "-c", "echo out; echo err >&2"]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toBe("out\nerr\n");
    const bad = await m.cli(["submit", "--wait", "--", "sh", "-c", "echo nope; exit 7"]);
    expect(bad.code).toBe(7);
    expect(bad.stdout).toBe("nope\n");
    expect(bad.stderr).toContain("failed (exit 7)");
  });

  test("stdout and stderr keep their order in the log", async () => {
    const r = await m.cli([
      "submit",
      "--wait",
      "--",
      "sh",
      "-c",
      "for i in 1 2 3 4 5; do echo o$i; echo e$i >&2; done",
    ]);
    expect(r.stdout).toBe("o1\ne1\no2\ne2\no3\ne3\no4\ne4\no5\ne5\n");
  });

  test("submit --json gives the id and show --json the job", async () => {
    const s = await m.cli([
      "submit",
      "--json",
      "--name",
      "greeting",
      "--env",
      "WHO=kiln",
      "--",
      "sh",
      "-c",
      'echo "hi $WHO $KILN_JOB_ID"',
    ]);
    expect(s.code).toBe(0);
    const { id } = JSON.parse(s.stdout);
    const job = await waitJob(m, id);
    expect(job.state).toBe("succeeded");
    const show = await m.cli(["show", String(id), "--json"]);
    const view = JSON.parse(show.stdout);
    expect(view).toMatchObject({ id, name: "greeting", state: "succeeded", exitCode: 0, worker: "local" });
    expect(typeof view.resources.cpuMs).toBe("number");
    const logs = await m.cli(["logs", String(id)]);
    expect(logs.stdout).toBe(`hi kiln ${id}\n`);
  });

  test("a job killed by a signal fails with reason signal", async () => {
    const id = await submitJob(m, { command: ["sh", "-c", "kill -9 $$"] });
    const job = await waitJob(m, id);
    expect([job.state, job.reason]).toEqual(["failed", "signal"]);
  });

  test("cancel kills a running job within a second and a queued job at once", async () => {
    const id = await submitJob(m, { command: ["sh", "-c", "echo started; exec sleep 300"] });
    await waitFor(
      "the job to start",
      async () => (await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.logSize > 0,
    );
    const t0 = Date.now();
    const r = await m.cli(["cancel", String(id)]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const job = await waitJob(m, id, 5000);
    expect(job.state).toBe("cancelled");
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(Bun.spawnSync(["pgrep", "-f", "exec sleep 300"]).exitCode).toBe(1);

    await m.cli(["hold", "local", "--reason", "maintenance"]);
    const queued = await submitJob(m, { command: ["true"] });
    const c = await m.cli(["cancel", String(queued), "--json"]);
    expect(JSON.parse(c.stdout).state).toBe("cancelled");
    await m.cli(["release", "local"]);
    const again = await m.cli(["cancel", String(queued)]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("already ended cancelled");
  });

  test("a job past its timeout ends timed_out and its processes are gone", async () => {
    // A marker of this run only, so no other process on the machine can be mistaken for the job's.
    const marker = `kiln-timeout-${process.pid}-${Date.now()}`;
    const r = await m.cli([
      "submit",
      "--wait",
      "--timeout",
      "1s",
      "--",
      "sh",
      "-c",
      `echo tick; sh -c 'sleep 200' ${marker} & wait`,
    ]);
    expect(r.code).toBe(124);
    expect(r.stderr).toContain("timed_out");
    const left = () =>
      Bun.spawnSync(["pgrep", "-af", marker])
        .stdout.toString()
        .split("\n")
        .filter((l) => l && !l.includes("kiln submit"));
    await waitFor(`the job's processes to die (${left().join("; ")})`, () => left().length === 0);
  });

  test("priority orders the queue, FIFO within a priority", async () => {
    await m.cli(["hold", "local", "--reason", "queue up"]);
    const order: [number, number][] = [];
    for (const p of [0, 5, 1, 5, 0, 9])
      order.push([await submitJob(m, { command: ["true"], priority: p }), p]);
    await m.cli(["drain", "local"]);
    await m.cli(["release", "local"]);
    const jobs = await Promise.all(order.map(([id]) => waitJob(m, id)));
    const started = jobs
      .map((j, i) => ({ p: order[i]![1], id: j.id, at: Date.parse(j.startedAt!) }))
      .sort((a, b) => a.at - b.at || a.id - b.id);
    // Two slots start two jobs at once; compare the order in which they were assigned.
    const events = await Promise.all(
      order.map(async ([id]) => {
        const ev = (await m.api<{ state: string; id: number }[]>("GET", `/api/v1/jobs/${id}/events`)).body;
        return { id, seq: ev.find((e) => e.state === "assigned")!.id };
      }),
    );
    const byAssign = events.sort((a, b) => a.seq - b.seq).map((e) => order.find(([id]) => id === e.id)![1]);
    expect(byAssign).toEqual([9, 5, 5, 1, 0, 0]);
    expect(started.length).toBe(6);
    const fifo = events.filter((e) => order.find(([id]) => id === e.id)![1] === 5).map((e) => e.id);
    expect(fifo).toEqual([...fifo].sort((a, b) => a - b));
  });

  test("a job no registered worker can run stays queued and show says why", async () => {
    const id = await submitJob(m, { command: ["true"], channel: "gpu" });
    const show = await m.cli(["show", String(id)]);
    expect(show.stdout).toContain("state:       queued");
    expect(show.stdout).toContain('none offers channel "gpu"');
    const arch = await submitJob(m, { command: ["true"], arch: "riscv64" });
    expect((await m.api<JobJson>("GET", `/api/v1/jobs/${arch}`)).body.waitingFor).toContain("arch riscv64");
    await m.cli(["cancel", String(id)]);
    await m.cli(["cancel", String(arch)]);
  });

  test("retry queues a copy of an ended job", async () => {
    const id = await submitJob(m, { command: ["sh", "-c", "exit 2"] });
    await waitJob(m, id);
    const r = await m.cli(["retry", String(id), "--json"]);
    const copy = JSON.parse(r.stdout).id;
    expect(copy).toBeGreaterThan(id);
    const job = await waitJob(m, copy);
    expect(job.exitCode).toBe(2);
  });

  test("metrics, health and the OpenAPI document are served", async () => {
    expect(await (await fetch(`${m.url}/healthz`)).text()).toBe("ok\n");
    const metrics = await (await fetch(`${m.url}/metrics`)).text();
    expect(metrics).toMatch(/kiln_jobs\{state="succeeded"\} \d+/);
    expect(metrics).toContain("kiln_workers_connected 1");
    const doc = (await (await fetch(`${m.url}/api/v1/openapi.json`)).json()) as {
      paths: Record<string, unknown>;
    };
    expect(Object.keys(doc.paths)).toContain("/api/v1/admin/tokens");
  });

  afterAll(async () => {
    await stopAll();
    dir[Symbol.dispose]();
  });
});

describe("several workers", () => {
  const dir = tempDir();

  test("many jobs spread over several workers and no worker runs more than its capacity", async () => {
    const m = await startMaster(dir.path);
    const caps: Record<string, number> = { a: 1, b: 2, c: 3 };
    for (const [name, capacity] of Object.entries(caps)) await startWorker(m, dir.path, name, { capacity });
    const ids: number[] = [];
    for (let i = 0; i < 36; i++)
      ids.push(await submitJob(m, { command: ["sh", "-c", `sleep 0.1; echo job-${i}`] }));
    const jobs = await Promise.all(ids.map((id) => waitJob(m, id, 60_000)));
    expect(jobs.every((j) => j.state === "succeeded")).toBe(true);
    for (const [name, cap] of Object.entries(caps)) {
      const mine = jobs.filter((j) => j.worker === name);
      expect(mine.length).toBeGreaterThan(0);
      const edges = mine.flatMap((j) => [
        { t: Date.parse(j.startedAt!), d: 1 },
        { t: Date.parse(j.finishedAt!), d: -1 },
      ]);
      edges.sort((x, y) => x.t - y.t || x.d - y.d);
      let now = 0;
      let peak = 0;
      for (const e of edges) {
        now += e.d;
        peak = Math.max(peak, now);
      }
      expect(peak).toBeLessThanOrEqual(cap);
    }
    const logs = await Promise.all(ids.map(async (id) => (await m.cli(["logs", String(id)])).stdout));
    expect(logs).toEqual(ids.map((_, i) => `job-${i}\n`));
  }, 90_000);

  test("a channel routes jobs only to workers that serve it", async () => {
    using d2 = tempDir();
    const m = await startMaster(d2.path);
    const roles = [
      m,
      await startWorker(m, d2.path, "plain", { capacity: 2 }),
      await startWorker(m, d2.path, "builder", { capacity: 1, channels: "default,release" }),
    ];
    const ids = await Promise.all(
      [1, 2, 3].map(() => submitJob(m, { command: ["true"], channel: "release" })),
    );
    for (const id of ids) expect((await waitJob(m, id)).worker).toBe("builder");
    // Stopped before d2 goes: a worker whose data dir is removed under it could not find its volumes.
    for (const r of roles.reverse()) await r.kill("SIGTERM");
  }, 60_000);

  afterAll(async () => {
    await stopAll();
    dir[Symbol.dispose]();
  });
});

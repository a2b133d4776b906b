// Where a sandboxed job's time goes: N `true` jobs (16 MiB loop scratch) on one 4-slot worker, as in the
// queue bench, then each stage of a job from the master's own timestamps, the CPU each process spent per
// job, the disk syncs per job (perf's syscall tracepoints, when perf is there), the processes started per
// job (strace, when it is there), and the launcher's own steps (its --debug trace). Beside it, the same
// jobs through the plain-process runner. Prints Markdown tables.
import { Database } from "bun:sqlite";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import {
  attachJobCgroup,
  detectCgroups,
  openJobCgroup,
  removeCgroup,
} from "../../src/sandbox/cgroups/index.ts";
import { attachScratch, createScratch, destroyScratch } from "../../src/sandbox/scratch.ts";
import { startSlotKeeper } from "../../src/sandbox/slot-keeper.ts";
import { KILN, startCluster } from "./cluster.ts";

const N = Number(process.env.BENCH_JOBS ?? 300);
const LAUNCHES = Number(process.env.BENCH_RUNS ?? 30);
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-profile-"));
const HELPER = resolve(import.meta.dir, "..", "..", "dist", "kiln-sandbox");

const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[xs.length >> 1]! : Number.NaN);
const pct = (xs: number[], p: number) =>
  xs.length
    ? [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!
    : Number.NaN;
const ms = (x: number) => (Number.isNaN(x) ? "-" : x.toFixed(1));

const TICK_MS = 10; // USER_HZ is 100 on Linux (proc(5), /proc/PID/stat)
function cpuMs(pid: number) {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return {
    own: (Number(f[11]) + Number(f[12])) * TICK_MS,
    children: (Number(f[13]) + Number(f[14])) * TICK_MS,
  };
}

/** Counts syscalls of `pids` (and their threads) while `during` runs; null without a usable perf. */
async function countSyscalls(pids: number[], names: string[], during: () => Promise<void>) {
  if (!Bun.which("perf")) {
    await during();
    return null;
  }
  const events = names.map((n) => `syscalls:sys_enter_${n}`);
  const perf = Bun.spawn(["perf", "stat", "-x", ",", "-e", events.join(","), "-p", pids.join(",")], {
    stdout: "ignore",
    stderr: "pipe",
  });
  await Bun.sleep(300); // perf attaches
  await during();
  perf.kill("SIGINT");
  const text = await new Response(perf.stderr).text();
  await perf.exited;
  const counts = new Map<string, number>();
  for (const line of text.split("\n")) {
    const [value, , event] = line.split(",");
    const name = event?.replace("syscalls:sys_enter_", "");
    if (name && names.includes(name) && /^\d+$/.test(value ?? "")) counts.set(name, Number(value));
  }
  return counts.size ? counts : null;
}

type Job = { id: number; state: string };

/** Runs N `true` jobs through one cluster and reads back where their time went. */
async function run(runner: "process" | "sandbox") {
  const sub = join(dir, runner);
  const workerLog = join(sub, "worker.log");
  mkdirSync(sub, { recursive: true });
  const c = await startCluster(sub, { capacity: 4, runner, workerLog: { level: "debug", file: workerLog } });
  const submit = () => c.api<Job>("POST", "/api/v1/jobs", { command: ["true"], scratchBytes: 16 << 20 });
  const drain = async (last: number) => {
    for (;;) {
      const j = await c.api<Job>("GET", `/api/v1/jobs/${last}`);
      const active = await Promise.all(
        ["queued", "assigned", "running"].map((s) =>
          c.api<unknown[]>("GET", `/api/v1/jobs?state=${s}&limit=1`),
        ),
      );
      if (j.state === "succeeded" && active.every((a) => a.length === 0)) return;
      await Bun.sleep(50);
    }
  };
  // Warm-up: the first jobs build the scratch format, open cgroups, compile the hot paths.
  const warm: number[] = [];
  for (let i = 0; i < 20; i++) warm.push((await submit()).id);
  await drain(Math.max(...warm));

  const ids: number[] = [];
  const cpu0 = { master: cpuMs(c.masterPid), worker: cpuMs(c.workerPid) };
  const t0 = performance.now();
  const syncs = await countSyscalls(
    [c.masterPid, c.workerPid],
    ["fsync", "fdatasync", "unlink", "unlinkat", "mkdir", "mkdirat"],
    async () => {
      for (let i = 0; i < N; i += 50) {
        const batch = await Promise.all(Array.from({ length: Math.min(50, N - i) }, submit));
        ids.push(...batch.map((b) => b.id));
      }
      await drain(Math.max(...ids));
    },
  );
  const secs = (performance.now() - t0) / 1000;
  const cpu1 = { master: cpuMs(c.masterPid), worker: cpuMs(c.workerPid) };

  // Processes per job: a few jobs with the worker traced (strace follows its children), apart from the
  // timed run, which tracing would slow down.
  let execs: number | null = null;
  if (Bun.which("strace")) {
    const log = join(sub, "strace.txt");
    const st = Bun.spawn(
      ["strace", "-f", "-qq", "-e", "trace=execve", "-o", log, "-p", String(c.workerPid)],
      {
        stdout: "ignore",
        stderr: "ignore",
      },
    );
    await Bun.sleep(500);
    const few: number[] = [];
    for (let i = 0; i < 10; i++) few.push((await submit()).id);
    await drain(Math.max(...few));
    st.kill("SIGINT");
    await st.exited;
    execs =
      readFileSync(log, "utf8")
        .split("\n")
        .filter((l) => /execve\(/.test(l) && !/= -1/.test(l)).length / 10;
  }
  await c.stop();

  // The master's timestamps of every state change, from its store once it has stopped.
  const db = new Database(join(sub, "m", "kiln.db"), { readonly: true });
  const rows = db
    .query(
      "SELECT e.job_id AS id, e.state AS state, e.at AS at, j.slot AS slot, j.created_at AS created FROM job_events e JOIN jobs j ON j.id = e.job_id WHERE e.job_id >= ? AND e.job_id <= ? ORDER BY e.id",
    )
    .all(Math.min(...ids), Math.max(...ids)) as {
    id: number;
    state: string;
    at: number;
    slot: string;
    created: number;
  }[];
  db.close();
  const byJob = new Map<number, Record<string, number> & { slot?: string }>();
  for (const r of rows) {
    const j = byJob.get(r.id) ?? { queued: r.created };
    j[r.state] = r.at;
    (j as { slot?: string }).slot = r.slot;
    byJob.set(r.id, j);
  }
  const jobs = [...byJob.values()].filter((j) => j.assigned && j.running && j.succeeded);
  const handover = jobs.map((j) => j.running! - j.assigned!);
  const running = jobs.map((j) => j.succeeded! - j.running!);
  // On each slot, from one job's end to the next job's assignment: the master's part of the turnaround.
  const turnaround: number[] = [];
  const cycle: number[] = [];
  const bySlot = new Map<string, typeof jobs>();
  for (const j of jobs) bySlot.set(j.slot!, [...(bySlot.get(j.slot!) ?? []), j]);
  for (const list of bySlot.values()) {
    list.sort((a, b) => a.assigned! - b.assigned!);
    for (let i = 1; i < list.length; i++) {
      turnaround.push(list[i]!.assigned! - list[i - 1]!.succeeded!);
      cycle.push(list[i]!.assigned! - list[i - 1]!.assigned!);
    }
  }
  // The worker's own account of each attempt (its debug records): the sandbox runner's steps, the time
  // from the job's end to its result going out, and from there to the master's ack.
  const measured = new Set(ids);
  const worker = new Map<string, number[]>();
  for (const line of readFileSync(workerLog, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    let rec: Record<string, unknown>;
    try {
      rec = JSON.parse(line);
    } catch {
      continue;
    }
    if (!measured.has(rec.jobId as number)) continue;
    for (const [k, v] of Object.entries(rec))
      if (k.endsWith("Ms") && typeof v === "number") worker.set(k, [...(worker.get(k) ?? []), v]);
  }
  const per = (a: { own: number; children: number }, b: { own: number; children: number }) => ({
    own: (b.own - a.own) / N,
    children: (b.children - a.children) / N,
  });
  return {
    rate: N / secs,
    handover,
    running,
    turnaround,
    cycle,
    cpu: { master: per(cpu0.master, cpu1.master), worker: per(cpu0.worker, cpu1.worker) },
    syncs,
    execs,
    worker,
  };
}

/**
 * The launcher's own steps: LAUNCHES runs of /bin/true as a worker starts a job (its slot's keeper holding
 * the network namespace, the 16 MiB scratch volume and the skeleton; the volume emptied after each run),
 * with --debug.
 */
async function launcherSteps() {
  const layout = detectCgroups();
  const cg = openJobCgroup(layout, `kiln-bench-${process.pid}/slot-0`);
  const cfg = { backend: "loop" as const, dir: join(dir, "launch-scratch") };
  const volume = attachScratch(await createScratch(cfg, "launch", 16 << 20));
  const keeper = await startSlotKeeper(HELPER, join(cfg.dir, "slot-0"), volume, {
    kilnBin: KILN,
    masks: [],
    devices: [],
  });
  const steps = new Map<string, number[]>();
  const walls: number[] = [];
  const wipes: number[] = [];
  try {
    for (let i = 0; i < LAUNCHES + 2; i++) {
      const t0 = performance.now();
      const p = Bun.spawn(
        [
          HELPER,
          "--debug",
          "--status-fd",
          "3",
          "--uid",
          "1499999999",
          "--gid",
          "1499999999",
          "--templates",
          ...cg.procsFiles.flatMap((f) => ["--cgroup", f]),
          ...keeper.launchArgs({ skeleton: true, volume: true }),
          "--",
          "/bin/true",
        ],
        { stdio: ["ignore", "ignore", "pipe", "pipe"] },
      );
      const status = new Response(p.stdio[3] as unknown as ReadableStream).text();
      const err = await new Response(p.stderr as ReadableStream).text();
      await p.exited;
      await status;
      walls.push(performance.now() - t0);
      const w0 = performance.now();
      await keeper.wipe();
      wipes.push(performance.now() - w0);
      if (i < 2) continue; // warm-up
      const lines = err
        .split("\n")
        .map((l) => /^kiln-sandbox\[(\d+)\] (\d+)\.(\d+): (.*)$/.exec(l))
        .filter((m) => m !== null);
      // A step the trace names several times (init, scratch...) counts once per launch, summed.
      const mine = new Map<string, number>();
      for (let j = 0; j + 1 < lines.length; j++) {
        const at = (m: RegExpExecArray) => Number(m[2]) * 1000 + Number(m[3]) / 1000;
        const who = lines[j]![1] === lines[0]![1] ? "outer" : "PID 1";
        const key = `${who}: ${lines[j]![4]}`;
        mine.set(key, (mine.get(key) ?? 0) + at(lines[j + 1]!) - at(lines[j]!));
      }
      for (const [key, took] of mine) steps.set(key, [...(steps.get(key) ?? []), took]);
    }
  } finally {
    await keeper.stop();
    await destroyScratch(cfg, volume);
    await removeCgroup(cg);
    await removeCgroup(attachJobCgroup(layout, `kiln-bench-${process.pid}`));
  }
  steps.set("keeper: wipe (after the launcher exited)", wipes.slice(2));
  return { wall: median(walls.slice(2)), steps };
}

const plain = await run("process");
const boxed = await run("sandbox");

const row = (what: string, f: (r: typeof plain) => string) => `| ${what} | ${f(plain)} | ${f(boxed)} |`;
const stage = (xs: number[]) => `${ms(median(xs))} / ${ms(pct(xs, 90))}`;
const perJob = (r: typeof plain, name: string) => (r.syncs ? ((r.syncs.get(name) ?? 0) / N).toFixed(2) : "-");
console.log(`${N} \`true\` jobs on 4 slots, 16 MiB loop scratch (sandbox); stages from the master's timestamps (ms, median / p90)

| per job | plain-process runner | sandbox runner |
|---|---|---|
${row("throughput", (r) => `${r.rate.toFixed(0)} jobs/s`)}
${row("assigned → running: master commit, websocket, worker set-up, launch, job.started", (r) => stage(r.handover))}
${row("running → succeeded: the job, its end, the worker's clean-up and report, the master's commit", (r) => stage(r.running))}
${row("succeeded → next job assigned on the same slot (master)", (r) => stage(r.turnaround))}
${row("one job's assignment to the next on the same slot", (r) => stage(r.cycle))}
${row("CPU, master", (r) => `${r.cpu.master.own.toFixed(1)} ms`)}
${row("CPU, worker (own)", (r) => `${r.cpu.worker.own.toFixed(1)} ms`)}
${row("CPU, worker's processes (launcher, job, tools)", (r) => `${r.cpu.worker.children.toFixed(1)} ms`)}
${row("fsync + fdatasync, master, worker and the worker's processes", (r) => (r.syncs ? `${perJob(r, "fsync")} + ${perJob(r, "fdatasync")}` : "-"))}
${row("unlink(at) / mkdir(at), the same", (r) => (r.syncs ? `${(Number(perJob(r, "unlink")) + Number(perJob(r, "unlinkat"))).toFixed(2)} / ${(Number(perJob(r, "mkdir")) + Number(perJob(r, "mkdirat"))).toFixed(2)}` : "-"))}
${row("programs executed by the worker and its children", (r) => (r.execs === null ? "-" : r.execs.toFixed(1)))}
`);
const WORKER_STEPS: [string, string][] = [
  ["setupMs", "worker: cgroups, scratch volume made ahead, launcher spawned"],
  ["launchMs", "launcher: namespaces, mounts, the job's exec (to its ready line)"],
  ["runMs", "the job itself, and PID 1 reaping it (to the final status line)"],
  ["collectMs", "collecting $KILN_OUT (skipped when empty)"],
  ["teardownMs", "the job's namespaces going, the loop device clearing (to the launcher's exit)"],
  ["cleanupMs", "worker: cgroups empty and usage read, scratch detached"],
  ["reportMs", "worker: outcome.json written, job.finished sent"],
  ["ackMs", "job.finished to the master's ack (its commit and WAL sync)"],
];
console.log(`Inside "running → succeeded" and around it, as the worker's debug records time it (ms, median / p90):

| step | plain-process runner | sandbox runner |
|---|---|---|`);
for (const [key, what] of WORKER_STEPS) console.log(row(what, (r) => stage(r.worker.get(key) ?? [])));
console.log();
const launch = await launcherSteps().finally(() => rmSync(dir, { recursive: true, force: true }));
const total = [...launch.steps.values()].reduce((a, v) => a + median(v), 0);
console.log(`The launcher alone (${LAUNCHES} launches of /bin/true with a slot's cgroups, its keeper and its 16 MiB scratch volume), wall median ${launch.wall.toFixed(1)} ms; each step of its --debug trace until the next, summed per launch (ms; "PID 1: exit" is the job's namespaces going away until the outer process sees it):

| step | median | mean |
|---|---|---|`);
for (const [k, v] of [...launch.steps].sort((a, b) => median(b[1]) - median(a[1]))) {
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  console.log(`| ${k} | ${median(v).toFixed(2)} | ${mean.toFixed(2)} |`);
}
console.log(`| sum of the medians | ${total.toFixed(2)} | |`);

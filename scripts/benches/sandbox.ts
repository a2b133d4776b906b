// Sandbox launch benchmark: median wall time to run /bin/true through Kiln's launcher (no scratch, and
// with a loop ext4 scratch including its creation and removal), beside plain fork+exec, bubblewrap, and
// util-linux unshare + setpriv, all from Bun in the same run. Then the CPU each launch costs (the
// launched processes' own, kernel time included) beside the same peers and the floor of any per-job
// namespace sandbox (floor.c), and the worker's RSS per running job.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { attachScratch, createScratch, destroyScratch } from "../../src/sandbox/scratch.ts";
import { startSlotKeeper } from "../../src/sandbox/slot-keeper.ts";
import { KILN, rss, startCluster } from "./cluster.ts";

const ROOT = resolve(import.meta.dir, "..", "..");
const HELPER = join(ROOT, "dist", "kiln-sandbox");
const N = Number(process.env.BENCH_RUNS ?? 50);
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-sbx-"));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function time(cmd: () => Promise<void>): Promise<number> {
  await cmd(); // warm-up
  const xs: number[] = [];
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    await cmd();
    xs.push(performance.now() - t);
  }
  return median(xs);
}
async function run(argv: string[]) {
  const p = Bun.spawn(argv, { stdout: "ignore", stderr: "pipe" });
  if ((await p.exited) !== 0) throw new Error(`${argv[0]} failed: ${await new Response(p.stderr).text()}`);
}

const sandbox = ["--uid", "1499999999", "--gid", "1499999999", "--kiln-bin", KILN];
const rows: [string, number][] = [];
rows.push(["fork+exec /bin/true (Bun.spawn)", await time(() => run(["/bin/true"]))]);
rows.push(["Kiln launcher, tmpfs /tmp", await time(() => run([HELPER, ...sandbox, "--", "/bin/true"]))]);
const scratchCfg = { backend: "loop" as const, dir: join(dir, "scratch") };
rows.push([
  "Kiln launcher, 1 GiB loop ext4 /tmp (create, mount, remove)",
  await time(async () => {
    const s = await createScratch(scratchCfg, "bench", 1 << 30);
    await run([HELPER, ...sandbox, "--scratch-file", (s as { file: string }).file, "--", "/bin/true"]);
    await destroyScratch(scratchCfg, s);
  }),
]);
// As a worker runs a slot's jobs: its keeper holds the network namespace, the skeleton root and a 16 MiB
// loop volume, which it empties after each launch (the wipe is counted in the row).
const slotVolume = attachScratch(await createScratch(scratchCfg, "slot", 16 << 20));
const keeper = await startSlotKeeper(HELPER, join(dir, "slot"), slotVolume, {
  kilnBin: KILN,
  masks: [],
  devices: [],
});
const viaKeeper = [
  ...sandbox.filter((_, i) => i < 4), // --uid, --gid: the kiln binary is in the skeleton
  ...keeper.launchArgs({ skeleton: true, volume: true }),
];
const keeperLaunch = async () => {
  await run([HELPER, ...viaKeeper, "--", "/bin/true"]);
  await keeper.wipe();
};
rows.push([
  "Kiln launcher, slot keeper: skeleton root, 16 MiB loop volume emptied after each",
  await time(keeperLaunch),
]);
if (Bun.which("bwrap")) {
  rows.push([
    "bwrap --unshare-all --ro-bind / / /bin/true",
    await time(() => run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "/bin/true"])),
  ]);
}
rows.push([
  "unshare -mpfiun --mount-proc + setpriv (uid drop)",
  await time(() =>
    run([
      "unshare",
      "-mpfiun",
      "--mount-proc",
      "setpriv",
      "--reuid",
      "65534",
      "--regid",
      "65534",
      "--clear-groups",
      "/bin/true",
    ]),
  ),
]);

// CPU per launch: the task-clock of the launched process and every process it started, from perf stat,
// which follows forks (the children fields of /proc/self/stat miss what a sandbox's own init reaps).
// Wall time above includes waiting; this is what a launch takes from a busy machine.
async function cpuPerLaunch(argv: string[], launches = N): Promise<number> {
  const p = Bun.spawn(["perf", "stat", "-x", ",", "-e", "task-clock", "--", ...argv], {
    stdout: "ignore",
    stderr: "pipe",
  });
  const err = await new Response(p.stderr).text();
  if ((await p.exited) !== 0) throw new Error(`${argv[0]} failed: ${err}`);
  const line = err.split("\n").find((l) => l.includes("task-clock"));
  return Number(line?.split(",")[0]) / launches;
}
const cpuRows: [string, number][] = [];
if (Bun.which("perf")) {
  // One perf per row over a shell loop would count the shell; each launch is measured on its own instead
  // (perf stat -r), so a row is the mean of N.
  const each = async (argv: string[]) => {
    let total = 0;
    for (let i = 0; i < N; i++) total += await cpuPerLaunch(argv, 1);
    return total / N;
  };
  cpuRows.push(["fork+exec /bin/true", await each(["/bin/true"])]);
  cpuRows.push(["Kiln launcher, tmpfs /tmp", await each([HELPER, ...sandbox, "--", "/bin/true"])]);
  // perf would be the launcher's parent, which a keeper refuses: the CPU of the launches this process
  // waited for (each reaps its own children) and of the keeper's wipes instead, from /proc.
  const ticks = (pid: string) => {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return pid === "self" ? Number(f[13]) + Number(f[14]) : Number(f[11]) + Number(f[12]);
  };
  const perLaunch = async (launch: () => Promise<void>) => {
    const before = ticks("self") + ticks(String(keeper.pid));
    const many = N * 10;
    for (let i = 0; i < many; i++) await launch();
    return ((ticks("self") + ticks(String(keeper.pid)) - before) * 10) / many;
  };
  cpuRows.push([
    "Kiln launcher, tmpfs /tmp (measured as the next row: CPU of the waited-for processes, from /proc)",
    await perLaunch(() => run([HELPER, ...sandbox, "--", "/bin/true"])),
  ]);
  cpuRows.push([
    "Kiln launcher, slot keeper (as a worker runs jobs; the keeper's wipe included)",
    await perLaunch(keeperLaunch),
  ]);
  if (Bun.which("bwrap"))
    cpuRows.push([
      "bwrap --unshare-all --ro-bind / / /bin/true",
      await each(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "/bin/true"]),
    ]);
  // The floor, compiled here: one process launching N times itself.
  const floor = join(dir, "floor");
  if (Bun.which("gcc")) {
    await run(["gcc", "-O2", "-o", floor, join(import.meta.dir, "floor.c")]);
    cpuRows.push([
      "floor: clone into new PID, mount, net, IPC, UTS, cgroup namespaces, /proc and a tmpfs, uid drop, exec (floor.c)",
      await cpuPerLaunch([floor, String(N)]),
    ]);
  }
}

await keeper.stop();
await destroyScratch(scratchCfg, slotVolume);

// Worker memory per running job: a worker with 4 slots, idle and then running 4 sleeping jobs.
const c = await startCluster(dir, { capacity: 4 });
await Bun.sleep(1000);
const idle = rss(c.workerPid).total;
for (let i = 0; i < 4; i++)
  await c.api("POST", "/api/v1/jobs", { command: ["sleep", "20"], scratchBytes: 16 << 20 });
while ((await c.api<unknown[]>("GET", "/api/v1/jobs?state=running")).length < 4) await Bun.sleep(50);
await Bun.sleep(1000);
const busy = rss(c.workerPid).total;
await c.stop();
rmSync(dir, { recursive: true, force: true });

const base = rows[0]![1];
console.log("| launch of /bin/true | median ms | over fork+exec |\n|---|---|---|");
for (const [what, ms] of rows) console.log(`| ${what} | ${ms.toFixed(2)} | ${(ms - base).toFixed(2)} |`);
// The launch-speed target compares overheads measured in this same run: Kiln's at most 0.70 of bwrap's.
const over = (label: string) => {
  const row = rows.find(([what]) => what.startsWith(label));
  return row === undefined ? undefined : row[1] - base;
};
const kiln = over("Kiln launcher, tmpfs");
const kept = over("Kiln launcher, slot keeper");
const bwrap = over("bwrap");
if (kiln !== undefined && kept !== undefined && bwrap !== undefined) {
  console.log(
    `\nover fork+exec: Kiln launcher ${kiln.toFixed(2)} ms on its own and ${kept.toFixed(2)} ms as a worker launches (slot keeper, volume emptied), bwrap ${bwrap.toFixed(2)} ms: ratios ${(kiln / bwrap).toFixed(2)} and ${(kept / bwrap).toFixed(2)} (target: at most 0.70)`,
  );
}
if (cpuRows.length > 0) {
  console.log(
    "\n| CPU per launch of /bin/true (perf stat task-clock of all its processes) | ms |\n|---|---|",
  );
  for (const [what, ms] of cpuRows) console.log(`| ${what} | ${ms.toFixed(2)} |`);
}
console.log(
  `\nworker RSS: idle ${(idle / 1048576).toFixed(1)} MB, with 4 running jobs ${(busy / 1048576).toFixed(1)} MB: ${((busy - idle) / 4 / 1048576).toFixed(2)} MB per running job (${N} runs per row)`,
);

// Backlog benchmark: what 100,000 jobs waiting for a channel no worker serves cost everyone else. The
// same master and worker run twice in one run, on an empty queue and on a queue holding the backlog;
// each time a normal job's submit-to-finish latency, the master's RSS and the master's CPU time over
// the measurement are taken. A dispatch pass must cost what the free slots can take, so the two columns
// should match. Prints a Markdown table.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { seedQueuedJobs } from "../../test/seed.ts";
import { rss, startCluster } from "./cluster.ts";

const BACKLOG = Number(process.env.KILN_BENCH_BACKLOG ?? 100_000);
const N = 200;
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-backlog-"));
type Job = { id: number; state: string };

const cpuMs = (pid: number) => {
  // Fields 14 and 15 of /proc/PID/stat: utime and stime in clock ticks (100 per second on Linux).
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
};
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

async function measure(backlog: number) {
  const sub = join(dir, String(backlog));
  if (backlog > 0) await seedQueuedJobs(join(sub, "m"), backlog, { channel: "offline" });
  const c = await startCluster(sub, { capacity: 4, runner: "process" });
  await Bun.sleep(500);
  const idle = rss(c.masterPid);
  const cpu0 = cpuMs(c.masterPid);
  const lat: number[] = [];
  for (let i = 0; i < N; i++) {
    const t = performance.now();
    const { id } = await c.api<Job>("POST", "/api/v1/jobs", { command: ["true"] });
    for (;;) {
      const j = await c.api<Job>("GET", `/api/v1/jobs/${id}`);
      if (j.state === "succeeded" || j.state === "failed") break;
      await Bun.sleep(1);
    }
    lat.push(performance.now() - t);
  }
  const cpu = cpuMs(c.masterPid) - cpu0;
  const after = rss(c.masterPid);
  // A Prometheus scrape: its job counts must not cost more with the backlog stored.
  const scrape: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t = performance.now();
    await (await fetch(`${c.url}/metrics`)).text();
    scrape.push(performance.now() - t);
  }
  await c.stop();
  return { lat, cpu, idle, after, scrape };
}

const empty = await measure(0);
const full = await measure(BACKLOG);
rmSync(dir, { recursive: true, force: true });

const mb = (b: number) => `${(b / 1048576).toFixed(1)} MB`;
const col = (r: typeof empty) => [
  `${pct(r.lat, 50).toFixed(1)} ms / ${pct(r.lat, 99).toFixed(1)} ms`,
  `${(r.cpu / N).toFixed(1)} ms`,
  `${mb(r.idle.total)} / ${mb(r.after.total)} (${mb(r.after.anon)} private)`,
  `${pct(r.scrape, 50).toFixed(2)} ms`,
];
const [a, b] = [col(empty), col(full)];
console.log(`| measure (${N} \`true\` jobs one after another, plain-process runner, 4 slots) | empty queue | ${BACKLOG.toLocaleString("en")} jobs waiting for an unserved channel |
|---|---|---|
| submit-to-finish latency p50 / p99 | ${a[0]} | ${b[0]} |
| master CPU per job | ${a[1]} | ${b[1]} |
| master RSS idle / after | ${a[2]} | ${b[2]} |
| GET /metrics, median of 50 | ${a[3]} | ${b[3]} |`);

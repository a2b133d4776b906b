// Queue benchmark: submit-to-start latency with an idle worker, throughput of 1,000 `true` jobs on one
// worker with 4 slots, and master/worker RSS idle and after; side by side with plain fork+exec from Bun,
// the floor any job runner sits on. Prints a Markdown table.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const KILN = resolve(import.meta.dir, "..", "..", "dist", "kiln");
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-"));
const port = 17000 + Math.floor(Math.random() * 2000);
const url = `http://127.0.0.1:${port}`;
const env = { PATH: process.env.PATH!, KILN_LOG_FORMAT: "json", KILN_LOG_LEVEL: "warn" };

// Total RSS, and the private (anonymous) part: the rest are pages of the executable itself, shared by
// every kiln process on the host and reclaimable by the kernel.
const rss = (pid: number) => {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1]) * 1024;
  return { total: kb("VmRSS"), anon: kb("RssAnon") };
};
const mb = (r: { total: number; anon: number }) =>
  `${(r.total / 1048576).toFixed(1)} MB (${(r.anon / 1048576).toFixed(1)} MB private)`;
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const wait = async (cond: () => Promise<boolean>) => {
  while (!(await cond())) await Bun.sleep(10);
};

const master = Bun.spawn([KILN, "master", "--data", join(dir, "m"), "--listen", `127.0.0.1:${port}`], {
  env,
  stdout: "ignore",
  stderr: "inherit",
});
await wait(async () => (await fetch(`${url}/readyz`).catch(() => null))?.ok === true);
const token = readFileSync(join(dir, "m", "admin.token"), "utf8").trim();
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
const api = async (method: string, path: string, body?: unknown) =>
  (
    await fetch(`${url}${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined })
  ).json() as Promise<Record<string, unknown>>;
const worker = Bun.spawn(
  [
    KILN,
    "worker",
    "--master",
    url,
    "--join",
    token,
    "--name",
    "bench",
    "--capacity",
    "4",
    "--data",
    join(dir, "w"),
  ],
  {
    env,
    stdout: "ignore",
    stderr: "inherit",
  },
);
await wait(
  async () =>
    ((await api("GET", "/api/v1/workers")) as unknown as { connected: boolean }[])[0]?.connected === true,
);
await Bun.sleep(500);
const idle = { master: rss(master.pid), worker: rss(worker.pid) };

// Latency: one job at a time on an idle worker; start - created, both stamped by the master.
const N_LAT = 200;
const lat: number[] = [];
for (let i = 0; i < N_LAT; i++) {
  const { id } = (await api("POST", "/api/v1/jobs", { command: ["true"] })) as { id: number };
  let job: Record<string, unknown>;
  for (;;) {
    job = await api("GET", `/api/v1/jobs/${id}`);
    if (job.state === "succeeded" || job.state === "failed") break;
    await Bun.sleep(2);
  }
  lat.push(Date.parse(job.startedAt as string) - Date.parse(job.createdAt as string));
}

// Throughput: 1,000 jobs submitted as fast as the API takes them, until the last one ends.
const N = 1000;
const t0 = performance.now();
const ids: number[] = [];
for (let i = 0; i < N; i += 50) {
  const batch = await Promise.all(
    Array.from({ length: Math.min(50, N - i) }, () => api("POST", "/api/v1/jobs", { command: ["true"] })),
  );
  ids.push(...batch.map((b) => b.id as number));
}
await wait(async () => {
  const done = (await api("GET", "/api/v1/jobs?state=succeeded&limit=1")) as unknown as { id: number }[];
  const queued = (await api("GET", "/api/v1/jobs?state=queued&limit=1")) as unknown as unknown[];
  const running = (await api("GET", "/api/v1/jobs?state=running&limit=1")) as unknown as unknown[];
  const assigned = (await api("GET", "/api/v1/jobs?state=assigned&limit=1")) as unknown as unknown[];
  return (
    done[0]?.id === Math.max(...ids) && queued.length === 0 && running.length === 0 && assigned.length === 0
  );
});
const secs = (performance.now() - t0) / 1000;
await Bun.sleep(300);
const after = { master: rss(master.pid), worker: rss(worker.pid) };
master.kill();
worker.kill();
await Promise.all([master.exited, worker.exited]);
rmSync(dir, { recursive: true, force: true });

// The peer: fork+exec of /bin/true from Bun, one at a time and four at a time.
const forkLat: number[] = [];
for (let i = 0; i < N_LAT; i++) {
  const s = performance.now();
  await Bun.spawn(["/bin/true"]).exited;
  forkLat.push(performance.now() - s);
}
const f0 = performance.now();
let next = 0;
await Promise.all(
  Array.from({ length: 4 }, async () => {
    while (next++ < N) await Bun.spawn(["/bin/true"]).exited;
  }),
);
const forkSecs = (performance.now() - f0) / 1000;

console.log(`| measure | Kiln (master + 1 worker, 4 slots) | fork+exec from Bun |
|---|---|---|
| submit-to-start latency p50 / p99 (${N_LAT} jobs, idle worker) | ${pct(lat, 50)} ms / ${pct(lat, 99)} ms | ${pct(forkLat, 50).toFixed(2)} ms / ${pct(forkLat, 99).toFixed(2)} ms (spawn to exit) |
| ${N} \`true\` jobs, 4 at a time | ${(N / secs).toFixed(0)} jobs/s (${secs.toFixed(1)} s) | ${(N / forkSecs).toFixed(0)} spawns/s |
| master RSS idle / after | ${mb(idle.master)} / ${mb(after.master)} | - |
| worker RSS idle / after | ${mb(idle.worker)} / ${mb(after.worker)} | - |`);

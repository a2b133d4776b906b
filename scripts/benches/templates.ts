// Template benchmark: time to the first job on a cold template (a debootstrap bookworm minbase build)
// against a warm cache, and the launch overhead of a job on a cached template root against --root host,
// measured as submit-to-end of a `true` job through one master and worker.
import { mkdtempSync, rmSync } from "node:fs";
import { startCluster } from "./cluster.ts";

const dir = mkdtempSync("/var/tmp/kiln-bench-tpl-");
const c = await startCluster(dir, { up: true, capacity: 1 });
type Job = { id: number; state: string; message: string; startedAt: string; finishedAt: string };

const runJob = async (root: string) => {
  const t = performance.now();
  const { id } = await c.api<Job>("POST", "/api/v1/jobs", {
    command: ["true"],
    root,
    scratchBytes: 16 << 20,
  });
  for (;;) {
    const j = await c.api<Job>("GET", `/api/v1/jobs/${id}`);
    if (["succeeded", "failed"].includes(j.state)) {
      if (j.state !== "succeeded") throw new Error(`job ${id} on ${root}: ${j.message}`);
      return {
        wall: performance.now() - t,
        startToEnd: Date.parse(j.finishedAt) - Date.parse(j.startedAt),
      };
    }
    await Bun.sleep(5);
  }
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

await c.api("POST", "/api/v1/templates", {
  name: "bench-bookworm",
  recipe: {
    kind: "debootstrap",
    suite: "bookworm",
    mirror: "http://deb.debian.org/debian",
    variant: "minbase",
    include: [],
    packages: [],
  },
});
const cold = await runJob("bench-bookworm");
const warm = await runJob("bench-bookworm");
const N = 30;
const host: number[] = [];
const tpl: number[] = [];
for (let i = 0; i < N; i++) {
  host.push((await runJob("host")).wall);
  tpl.push((await runJob("bench-bookworm")).wall);
}
await c.stop();
rmSync(dir, { recursive: true, force: true });

console.log(`| measure | template | --root host |
|---|---|---|
| first job on a cold template (debootstrap bookworm minbase, then the job) | ${(cold.wall / 1000).toFixed(1)} s | - |
| first job on the warm cache | ${warm.wall.toFixed(0)} ms | - |
| submit to end of a \`true\` job, median of ${N} (16 MiB loop scratch) | ${median(tpl).toFixed(1)} ms | ${median(host).toFixed(1)} ms |
| difference | ${(median(tpl) - median(host)).toFixed(1)} ms | |`);

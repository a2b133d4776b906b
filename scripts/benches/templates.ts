// Template benchmark: time to the first job on a cold template (a debootstrap bookworm minbase build)
// against a warm cache, and the launch overhead of a job on a cached template root against --root host,
// measured as submit-to-end of a `true` job through one master and worker.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";

const KILN = resolve(import.meta.dir, "..", "..", "dist", "kiln");
const dir = mkdtempSync("/var/tmp/kiln-bench-tpl-");
const port = 20000 + Math.floor(Math.random() * 1000);
const url = `http://127.0.0.1:${port}`;
const env = { PATH: process.env.PATH!, KILN_LOG_LEVEL: "warn", KILN_LOG_FORMAT: "json" };
const up = Bun.spawn(
  [KILN, "up", "--data", join(dir, "d"), "--listen", `127.0.0.1:${port}`, "--capacity", "1"],
  { env, stderr: "inherit" },
);
while (!(await fetch(`${url}/readyz`).catch(() => null))?.ok) await Bun.sleep(20);
const token = readFileSync(join(dir, "d", "admin.token"), "utf8").trim();
const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
const api = async (method: string, path: string, body?: unknown) =>
  (
    await fetch(`${url}${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined })
  ).json() as Promise<Record<string, unknown>>;
while (!((await api("GET", "/api/v1/workers")) as unknown as { connected: boolean }[])[0]?.connected)
  await Bun.sleep(20);

const runJob = async (root: string) => {
  const t = performance.now();
  const { id } = (await api("POST", "/api/v1/jobs", { command: ["true"], root, scratchBytes: 16 << 20 })) as {
    id: number;
  };
  for (;;) {
    const j = await api("GET", `/api/v1/jobs/${id}`);
    if (["succeeded", "failed"].includes(j.state as string)) {
      if (j.state !== "succeeded") throw new Error(`job ${id} on ${root}: ${j.message}`);
      return {
        wall: performance.now() - t,
        startToEnd: Date.parse(j.finishedAt as string) - Date.parse(j.startedAt as string),
      };
    }
    await Bun.sleep(5);
  }
};
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

await api("POST", "/api/v1/templates", {
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
up.kill("SIGTERM");
await up.exited;
rmSync(dir, { recursive: true, force: true });

console.log(`| measure | template | --root host |
|---|---|---|
| first job on a cold template (debootstrap bookworm minbase, then the job) | ${(cold.wall / 1000).toFixed(1)} s | - |
| first job on the warm cache | ${warm.wall.toFixed(0)} ms | - |
| submit to end of a \`true\` job, median of ${N} (16 MiB loop scratch) | ${median(tpl).toFixed(1)} ms | ${median(host).toFixed(1)} ms |
| difference | ${(median(tpl) - median(host)).toFixed(1)} ms | |`);

// Egress proxy throughput: 128 MiB down and up between a job and an upstream in a network namespace of
// its own, through the job's proxy (plain http with an absolute URI, and a CONNECT tunnel) beside the same
// client run directly from the host, in the same run; then the worker's peak RSS over the proxied runs.
// Readers on both sides read as fast as they can. Needs root (sandbox, network namespace).
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { type Master, startMaster, stopAll, submitJob, tempDir, waitJob } from "../../test/harness.ts";
import { startNetnsUpstream } from "../../test/upstream-netns.ts";

const MiB = 1 << 20;
const BODY = Number(process.env.BENCH_EGRESS_MIB ?? 128) * MiB;
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const CLIENT = resolve(import.meta.dir, "..", "..", "test", "integration", "egress-client.py");

interface Result {
  op: string;
  mode: string;
  bytes: number;
  seconds: number;
}

const dir = tempDir("kiln-bench-egress-", "/var/tmp");
const blob = join(dir.path, "blob.bin");
const bytes = new Uint8Array(BODY);
for (let i = 0; i < BODY; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
writeFileSync(blob, bytes);
writeFileSync(join(dir.path, "up.bin"), bytes);
const net = await startNetnsUpstream(blob, 0, "bb");
let m: Master | null = null;
try {
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "1", KILN_WORKER_NAME: "b-egress-bench", KILN_LOG_LEVEL: "warn" },
  });
  const url = `http://${net.address}`;
  const cases = ["down {mode} URL/blob", "up {mode} URL/sink /tmp/up.bin"].map((c) => c.replace("URL", url));
  const parse = (out: string) =>
    out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Result);

  // Direct: the same client on the host, no proxy and no sandbox.
  const direct: Result[] = [];
  for (let r = 0; r < RUNS; r++)
    for (const c of cases) {
      const args = c.replace("{mode}", "direct").replace("/tmp/up.bin", join(dir.path, "up.bin")).split(" ");
      const p = Bun.spawnSync(["python3", CLIENT, ...args], { stderr: "inherit" });
      direct.push(...parse(p.stdout.toString()));
    }

  // Through the proxy: one job per mode, each running every case RUNS times.
  const pid = m.proc.pid;
  writeFileSync(`/proc/${pid}/clear_refs`, "5"); // the peak RSS is from here on (proc(5))
  const base = Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;
  // utime + stime of the worker process, in clock ticks (proc(5); 100 a second on Linux).
  const cpu = () => {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  const cpuBefore = cpu();
  const proxied: Result[] = [];
  for (const mode of ["absolute", "connect"]) {
    const runs = Array.from({ length: RUNS }, () => cases.map((c) => c.replace("{mode}", mode))).flat();
    const id = await submitJob(m, {
      command: [
        "/bin/bash",
        "-c",
        `set -e; head -c ${BODY} /dev/urandom > /tmp/up.bin\n${runs.map((r) => `python3 -c "$CLIENT" ${r}`).join("\n")}`,
      ],
      env: { CLIENT: readFileSync(CLIENT, "utf8") },
      egress: [net.address],
      scratchBytes: 2 * BODY + 256 * MiB,
    });
    const job = await waitJob(m, id, 600_000);
    const out = (await m.cli(["logs", String(id)])).stdout;
    if (job.state !== "succeeded") throw new Error(`the ${mode} job ${job.state}: ${out}`);
    proxied.push(...parse(out));
  }
  const cpuUsed = cpu() - cpuBefore;
  const peak = Number(/^VmHWM:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;

  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const rate = (rs: Result[], op: string, mode: string) => {
    const xs = rs.filter((r) => r.op === op && r.mode === mode && r.bytes === BODY);
    if (xs.length !== RUNS) throw new Error(`${op} ${mode}: ${xs.length} of ${RUNS} runs moved every byte`);
    return median(xs.map((r) => r.bytes / MiB / r.seconds)).toFixed(0);
  };
  console.log(`${BODY / MiB} MiB per transfer, median of ${RUNS}, MiB/s:\n`);
  console.log("| path | download | upload |\n|---|---|---|");
  console.log(
    `| direct from the host (no proxy, no sandbox) | ${rate(direct, "down", "direct")} | ${rate(direct, "up", "direct")} |`,
  );
  for (const mode of ["absolute", "connect"])
    console.log(
      `| job through the proxy, ${mode === "absolute" ? "plain http (absolute URI)" : "CONNECT tunnel"} | ${rate(proxied, "down", mode)} | ${rate(proxied, "up", mode)} |`,
    );
  const relayed = proxied.reduce((n, r) => n + r.bytes, 0);
  console.log(
    `\nWorker (kiln up) over the proxied runs: RSS ${(base / MiB).toFixed(0)} MiB before, peak ${(peak / MiB).toFixed(0)} MiB; CPU ${((cpuUsed / relayed) * (1 << 30)).toFixed(2)} s per GiB relayed.`,
  );
} finally {
  await m?.kill("SIGTERM");
  await stopAll();
  await net.stop();
  dir[Symbol.dispose]();
}

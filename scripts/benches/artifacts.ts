// One 2 GiB artifact, end to end, beside the plain tools in the same run: the worker's delivery (hash,
// chunked upload, the master's write and check) against `cp` and `sha256sum` of the same bytes, and
// `kiln download` against `curl` of the same URL; then how far each process's resident set rose
// (peak since the measurement began, /proc/PID/status VmHWM after clear_refs). Master and worker run
// as processes of their own; the job runs as a plain process, so no sandbox cost is in the figures.
import { readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { startMaster, startWorker, stopAll, submitJob, tempDir, waitJob } from "../../test/harness.ts";
import { peakGrowth, startPeak } from "../../test/rss.ts";

const MiB = 2 ** 20;
const SIZE = Number(process.env.BENCH_ARTIFACT_MIB ?? 2048) * MiB;
const KILN = resolve(import.meta.dir, "..", "..", "dist", "kiln");
const dir = tempDir("kiln-bench-artifacts-", "/var/tmp");

const timed = async (cmd: string[], env: Record<string, string> = {}) => {
  const t0 = performance.now();
  const p = Bun.spawn(cmd, { env: { PATH: "/usr/bin:/bin", ...env }, stdout: "ignore", stderr: "pipe" });
  const [code, err] = await Promise.all([p.exited, new Response(p.stderr).text()]);
  if (code !== 0) throw new Error(`${cmd.join(" ")}: exit ${code}: ${err}`);
  return { seconds: (performance.now() - t0) / 1000, peak: p.resourceUsage()?.maxRSS ?? 0 };
};
const row = (what: string, seconds: number) =>
  console.log(`| ${what} | ${seconds.toFixed(1)} | ${(SIZE / MiB / seconds).toFixed(0)} |`);

try {
  const m = await startMaster(dir.path, { env: { KILN_LOG_LEVEL: "warn" } });
  const w = await startWorker(m, dir.path, "a-bench-artifacts", {
    env: { KILN_WORKER_RUNNER: "process", KILN_LOG_LEVEL: "warn" },
  });
  const warm = await submitJob(m, { command: ["sh", "-c", 'head -c 20M /dev/urandom > "$KILN_OUT/warm"'] });
  if ((await waitJob(m, warm, 60_000)).state !== "succeeded") throw new Error("the warm-up job failed");
  const masterBase = startPeak(m.proc.pid);
  const workerBase = startPeak(w.proc.pid);

  // The file is written for real (no holes), then the job prints when it was done: what follows until
  // the job is recorded finished is the delivery alone.
  const id = await submitJob(m, {
    command: [
      "sh",
      "-c",
      `head -c ${SIZE} /dev/zero > "$KILN_OUT/disk.img" && sync "$KILN_OUT/disk.img" && date +%s.%N`,
    ],
  });
  const job = await waitJob(m, id, 1_800_000);
  if (job.state !== "succeeded") throw new Error(`the job ${job.state}: ${job.message}`);
  const commandDone = Number((await m.cli(["logs", String(id)])).stdout.trim()) * 1000;
  const delivery = (Date.parse(job.finishedAt!) - commandDone) / 1000;
  const upload = { master: peakGrowth(m.proc.pid, masterBase), worker: peakGrowth(w.proc.pid, workerBase) };

  // The stored blob is the same bytes on the master's disk: the plain tools work on it.
  const shaDir = join(m.data, "artifacts", "sha256");
  const blob = readdirSync(shaDir, { recursive: true })
    .map((p) => join(shaDir, String(p)))
    .find((p) => /[0-9a-f]{64}$/.test(p) && Bun.file(p).size === SIZE)!;
  const cp = await timed(["cp", "--sparse=never", blob, join(dir.path, "cp.img")]);
  const sum = await timed(["sha256sum", blob]);

  const downloadBase = startPeak(m.proc.pid);
  const env = { KILN_URL: m.url, KILN_TOKEN: m.token };
  const dl = await timed([KILN, "download", String(id), "disk.img", "-o", join(dir.path, "kiln.img")], env);
  const masterDownload = peakGrowth(m.proc.pid, downloadBase);
  const small = await timed([KILN, "artifacts", String(id)], env);
  const curl = await timed([
    "curl",
    "-sf",
    "-H",
    `authorization: Bearer ${m.token}`,
    "-o",
    join(dir.path, "curl.img"),
    `${m.url}/api/v1/jobs/${id}/artifacts/disk.img`,
  ]);

  console.log(`One ${SIZE / MiB} MiB artifact on one machine (loopback, page cache warm):\n`);
  console.log("| path | s | MiB/s |\n|---|---|---|");
  row("`cp` of the stored blob (disk to disk)", cp.seconds);
  row("`sha256sum` of the stored blob", sum.seconds);
  row("Kiln delivery: worker hashes, sends 8 MiB chunks; master writes, hashes, stores", delivery);
  row("`curl` GET of the artifact from the master to a file", curl.seconds);
  row("`kiln download`: same GET, sha256 checked, to a file", dl.seconds);
  const mib = (b: number) => `${(b / MiB).toFixed(0)} MiB`;
  console.log(
    `\nResident set growth at its peak: master ${mib(upload.master)} and worker ${mib(upload.worker)} during the delivery; master ${mib(masterDownload)} serving the download; \`kiln download\` ${mib(dl.peak - small.peak)} over a \`kiln artifacts\` call (${mib(dl.peak)} in all).`,
  );
} finally {
  await stopAll();
  dir[Symbol.dispose]();
}

// Repository benchmark: a Debian repository of 1,000 packages (64 KiB each) in Kiln's repository builder,
// in process against a real store, gpg and dpkg-deb: the first publish of all of them, then one more
// package published into it (a fresh snapshot of 1,000 hardlinks, Packages, Release, InRelease signed),
// with how many package files that publish read and how many bytes the master process read meanwhile
// (/proc/self/io rchar) beside the bytes of the repository's packages. Side by side: dpkg-scanpackages,
// which reads every package, over the same pool; and createrepo_c for 1,000 RPMs, full and with the
// cache Kiln keeps (src/repo/rpm-bench.ts). Prints a Markdown table.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { createArtifactService } from "../../src/master/artifacts.ts";
import { repoDir } from "../../src/master/repo-snapshots.ts";
import { createRepoService, type PublishFile } from "../../src/master/repos.ts";
import { buildDeb, controlText } from "../../src/repo/deb-build.ts";
import { benchRpmMetadata } from "../../src/repo/rpm-bench.ts";
import { localBlobStore } from "../../src/storage/open.ts";
import { openStore } from "../../src/store/open.ts";
import { insertRepo } from "../../src/store/repos.ts";

const COUNT = Number(process.env.BENCH_REPO_PACKAGES ?? 1000);
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-repo-"));
const rchar = () => Number(/^rchar: (\d+)$/m.exec(readFileSync("/proc/self/io", "utf8"))?.[1] ?? 0);
const seconds = (t: number) => `${((performance.now() - t) / 1000).toFixed(2)} s`;

try {
  const store = await openStore(`file:${join(dir, "kiln.db")}`);
  const log = createConsola({ level: -999 });
  const blobs = localBlobStore(dir);
  const artifacts = createArtifactService({ dataDir: dir, store, blobs, local: blobs, log });
  const repos = createRepoService({ dataDir: dir, store, artifacts, log });
  let reads = 0;
  const read = repos.formats.deb.read;
  repos.formats.deb.read = (file) => {
    reads++;
    return read(file);
  };
  await insertRepo(store, {
    name: "bench",
    format: "deb",
    project: null,
    public: true,
    dist: "stable",
    component: "main",
    archs: ["amd64", "all"],
    keep: 3,
    keyFingerprint: null,
    createdAt: Date.now(),
    createdBy: "bench",
  });
  await repos.create("bench");

  // Packages that do not compress, so reading them all again would show in the bytes read.
  const deb = (name: string) => {
    const file = join(dir, `${name}.deb`);
    const data = [
      { name: "./", type: "5" as const },
      { name: "./usr/", type: "5" as const },
      { name: `./usr/${name}`, data: crypto.getRandomValues(new Uint8Array(64 * 1024)) },
    ];
    writeFileSync(file, buildDeb({ control: controlText({ name, version: "1.0-1", arch: "amd64" }), data }));
    return { path: file, label: name };
  };
  const files: PublishFile[] = [];
  for (let i = 1; i <= COUNT; i++) files.push(deb(`kiln-bench-${String(i).padStart(5, "0")}`));
  let t = performance.now();
  await repos.publish("bench", files, { by: "bench", jobId: null, force: false });
  const first = seconds(t);
  const firstReads = reads;

  const one = deb("kiln-bench-new");
  reads = 0;
  const before = rchar();
  t = performance.now();
  const r = await repos.publish("bench", [one], { by: "bench", jobId: null, force: false });
  const incremental = seconds(t);
  const readBytes = rchar() - before;
  const poolBytes = COUNT * (64 * 1024);

  // The peer: dpkg-scanpackages reads every package of the same pool to write the same index.
  const snapshot = join(repoDir(dir, "bench"), "snapshots", String(r.generation));
  t = performance.now();
  const scan = Bun.spawnSync(["dpkg-scanpackages", "-m", "pool"], {
    cwd: snapshot,
    stdout: "pipe",
    stderr: "ignore",
  });
  if (scan.exitCode !== 0) throw new Error("dpkg-scanpackages failed");
  const scanned = seconds(t);
  await repos.close();
  store.close();

  const rpm = await benchRpmMetadata(COUNT);
  console.log(`| what | time | package files read |
|---|---|---|
| Kiln, first publish of ${COUNT} .debs (each read once, one snapshot) | ${first} | ${firstReads} |
| Kiln, one .deb into a repository of ${COUNT}: snapshot, Packages(.gz), Release, InRelease + Release.gpg | ${incremental} | ${reads} (master read ${(readBytes / 2 ** 20).toFixed(1)} MiB; the pool holds ${(poolBytes / 2 ** 20).toFixed(0)} MiB) |
| dpkg-scanpackages over the same ${COUNT + 1} packages | ${scanned} | ${COUNT + 1} |
| createrepo_c, ${COUNT} .rpms, full | ${rpm.full.toFixed(2)} s | ${COUNT} |
| createrepo_c, one .rpm added, with Kiln's cache | ${rpm.incremental.toFixed(2)} s | ${rpm.reread} |`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

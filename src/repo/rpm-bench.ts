// Real RPMs for the RPM format's tests and benchmark, built with rpmbuild (Debian package rpm) from specs
// written here, and the metadata benchmark `scripts/bench repo` runs.
import { link, mkdir, mkdtemp, readdir, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PublishedPackage } from "./format.ts";
import { readRpm, rpmPoolPath, writeRpmMetadata } from "./rpm.ts";

/** Runs rpmbuild on a spec in `topdir` and returns the paths of every RPM it wrote (binary and source). */
export async function rpmbuild(topdir: string, spec: string, mode: "-bb" | "-ba" = "-ba"): Promise<string[]> {
  await mkdir(join(topdir, "SPECS"), { recursive: true });
  const file = join(topdir, "SPECS", "kiln.spec");
  await writeFile(file, spec);
  const proc = Bun.spawn(["rpmbuild", mode, "--define", `_topdir ${topdir}`, file], {
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: topdir, LC_ALL: "C" },
  });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) throw new Error(`rpmbuild failed (is the Debian package rpm installed?): ${err || out}`);
  const found: string[] = [];
  for (const sub of ["RPMS", "SRPMS"]) {
    const dir = join(topdir, sub);
    for (const entry of await readdir(dir, { recursive: true }).catch(() => [] as string[])) {
      if (entry.endsWith(".rpm")) found.push(join(dir, entry));
    }
  }
  return found.sort();
}

/** A spec for one package that installs `/usr/bin/NAME`, a script printing `output`. */
export function helloSpec(o: {
  name: string;
  version: string;
  release: string;
  epoch?: number;
  output: string;
}) {
  return `Name: ${o.name}
Version: ${o.version}
Release: ${o.release}
${o.epoch !== undefined ? `Epoch: ${o.epoch}\n` : ""}Summary: A greeting from Kiln's tests
License: MIT
# The script's /bin/sh is the host's: an installroot holds nothing else, so no automatic dependencies.
AutoReqProv: no
URL: https://kiln.invalid/${o.name}

%description
Prints a greeting.

%install
mkdir -p %{buildroot}/usr/bin
printf '#!/bin/sh\\necho "${o.output}"\\n' > %{buildroot}/usr/bin/${o.name}
chmod 755 %{buildroot}/usr/bin/${o.name}

%files
/usr/bin/${o.name}
`;
}

/**
 * A spec whose one rpmbuild run writes `count` small binary packages `PREFIX-00001` and up (subpackages),
 * each installing one small file, `/usr/share/PREFIX/00001` and up.
 */
export function manySpec(prefix: string, count: number, version = "1.0"): string {
  let spec = `Name: ${prefix}\nVersion: ${version}\nRelease: 1\nSummary: many\nLicense: MIT\n\n%description\nmany\n`;
  spec += `\n%install\nmkdir -p %{buildroot}/usr/share/${prefix}\n`;
  spec += `for i in $(seq ${count}); do echo "file $i" > %{buildroot}/usr/share/${prefix}/$(printf %%05d $i); done\n`;
  for (let i = 1; i <= count; i++) {
    const id = String(i).padStart(5, "0");
    const n = `${prefix}-${id}`;
    spec += `\n%package -n ${n}\nSummary: package ${i}\n%description -n ${n}\npackage ${i}\n`;
    spec += `%files -n ${n}\n/usr/share/${prefix}/${id}\n`;
  }
  return spec;
}

/** Moves built RPMs into `root` at their pool paths, read from their headers, as the publisher would. */
export async function placeRpms(root: string, files: string[]): Promise<PublishedPackage[]> {
  const out: PublishedPackage[] = [];
  for (const file of files) {
    const info = await readRpm(file);
    const path = rpmPoolPath(info);
    await mkdir(join(root, path, ".."), { recursive: true });
    await rename(file, join(root, path));
    out.push({ ...info, path });
  }
  return out;
}

/**
 * Measures createrepo_c over `count` small packages: a full run, then the next publish (a fresh snapshot of
 * hardlinks plus one new package) with the first run's metadata cached. Returns seconds and how many packages the second run re-read.
 */
export async function benchRpmMetadata(
  count = 1000,
): Promise<{ full: number; incremental: number; reread: number }> {
  const dir = await mkdtemp(join(tmpdir(), "kiln-rpm-bench-"));
  try {
    const built = await rpmbuild(join(dir, "build"), manySpec("kiln-bench", count), "-bb");
    const root = join(dir, "root");
    const packages = await placeRpms(root, built);
    const cacheDir = join(dir, "cache");
    const settings = { name: "bench", format: "rpm" as const, archs: [] };
    let t = performance.now();
    const first = await writeRpmMetadata(root, settings, packages, undefined, { cacheDir });
    if (first.read.length !== count)
      throw new Error(`createrepo_c read ${first.read.length} of ${count} packages`);
    const full = (performance.now() - t) / 1000;
    // The next publish writes a fresh snapshot: hardlinks of the kept packages plus the new one.
    const next = join(dir, "root-2");
    for (const p of packages) {
      await mkdir(join(next, p.path, ".."), { recursive: true });
      await link(join(root, p.path), join(next, p.path));
    }
    const extra = await placeRpms(
      next,
      await rpmbuild(join(dir, "extra"), manySpec("kiln-bench-new", 1), "-bb"),
    );
    t = performance.now();
    const { read } = await writeRpmMetadata(next, settings, [...packages, ...extra], undefined, { cacheDir });
    const incremental = (performance.now() - t) / 1000;
    return { full, incremental, reread: read.length };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.main) {
  const count = Number(process.argv[2] ?? 1000);
  const r = await benchRpmMetadata(count);
  console.log(
    `| createrepo_c, ${count} packages | full ${r.full.toFixed(2)} s | one added ${r.incremental.toFixed(2)} s, re-read ${r.reread} |`,
  );
}

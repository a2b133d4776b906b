// The RPM package format: reading a package's identity from its own header (never its file name), rpm's
// version order, and a repository's metadata through createrepo_c, signed for dnf's repo_gpgcheck.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { cp, mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createGunzip } from "node:zlib";
import { AppError, coerceError } from "../lib/errors.ts";
import type { PackageInfo, PublishedPackage, RepoFormat, RepoSettings, Signer } from "./format.ts";
import { bad, headerInt, headerString, RpmTag, readRpmHeaders } from "./rpm-header.ts";
import { compareRpmVersions, parseRpmEvr } from "./version.ts";

// What rpm allows in names, versions and architectures; anything else (a slash, "..", a space, a control
// character) would become a path below the repository or break the metadata.
const NAME_RE = /^[A-Za-z0-9_+][A-Za-z0-9._+-]*$/;
const VERSION_RE = /^[A-Za-z0-9._+~^]+$/;
const ARCH_RE = /^[A-Za-z0-9_]+$/;

async function sha256Of(file: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/** Reads an RPM's identity from its header: name, epoch:version-release, arch (`src` for source packages). */
export async function readRpm(file: string): Promise<PackageInfo> {
  const { size, source, main } = await readRpmHeaders(file);
  const field = (tag: number, label: string, re: RegExp) => {
    const v = headerString(file, main, tag);
    if (v === undefined) throw bad(file, `the header has no ${label}`);
    if (!re.test(v))
      throw bad(file, `its ${label} ${JSON.stringify(v.slice(0, 80))} has characters rpm does not allow`);
    return v;
  };
  const name = field(RpmTag.NAME, "NAME", NAME_RE);
  const version = field(RpmTag.VERSION, "VERSION", VERSION_RE);
  const release = field(RpmTag.RELEASE, "RELEASE", VERSION_RE);
  const buildArch = field(RpmTag.ARCH, "ARCH", ARCH_RE);
  const epoch = headerInt(file, main, RpmTag.EPOCH);
  const sourceRpm = headerString(file, main, RpmTag.SOURCERPM);
  const meta: Record<string, string> = { version, release, buildArch };
  if (epoch !== undefined) meta.epoch = String(epoch);
  if (sourceRpm !== undefined) meta.sourceRpm = sourceRpm;
  for (const [key, tag] of [
    ["summary", RpmTag.SUMMARY],
    ["license", RpmTag.LICENSE],
    ["url", RpmTag.URL],
  ] as const) {
    const v = headerString(file, main, tag);
    if (v !== undefined) meta[key] = v;
  }
  const buildTime = headerInt(file, main, RpmTag.BUILDTIME);
  if (buildTime !== undefined) meta.buildTime = String(buildTime);
  return {
    format: "rpm",
    name,
    version: `${epoch !== undefined ? `${epoch}:` : ""}${version}-${release}`,
    // rpm, createrepo_c and dnf call a source package's architecture "src" whatever host built it.
    arch: source ? "src" : buildArch,
    // `hello-2.10-1.src.rpm` names the source package `hello`: drop the version, release and suffix.
    source: sourceRpm?.replace(/\.(no)?src\.rpm$/, "").replace(/-[^-]*-[^-]*$/, ""),
    size,
    sha256: await sha256Of(file),
    meta,
  };
}

/** Where an RPM lives below the repository root: `Packages/<first letter>/<name>-<version>-<release>.<arch>.rpm`. */
export function rpmPoolPath(pkg: PackageInfo): string {
  const evr = parseRpmEvr(pkg.version);
  const version = pkg.meta.version ?? evr.version;
  const release = pkg.meta.release ?? evr.release;
  if (
    !NAME_RE.test(pkg.name) ||
    !VERSION_RE.test(version) ||
    !VERSION_RE.test(release) ||
    !ARCH_RE.test(pkg.arch)
  ) {
    throw new AppError("BAD_PACKAGE", `refusing an unsafe package path for ${JSON.stringify(pkg.name)}`);
  }
  return `Packages/${pkg.name[0]?.toLowerCase()}/${pkg.name}-${version}-${release}.${pkg.arch}.rpm`;
}

/** Options of the RPM format; `cacheDir` makes metadata regeneration incremental (see writeRpmMetadata). */
export interface RpmFormatOptions {
  /** A directory Kiln owns where the last metadata of each repository is kept, to be reused. */
  cacheDir?: string;
  /** The createrepo_c executable (default: found on PATH). */
  createrepo?: string;
}

/**
 * Runs createrepo_c over exactly `packages` in `root` and, with a signer, writes `repodata/repomd.xml.asc`.
 * Calls for one repository must not overlap (the publisher serializes them); different repositories may
 * run in parallel. With a cache directory the previous run's metadata is reused for every package whose path, size and mtime
 * are unchanged, so a publish reads only new packages (keep mtimes: hardlink or copy with times preserved).
 */
export async function writeRpmMetadata(
  root: string,
  settings: RepoSettings,
  packages: PublishedPackage[],
  signer?: Signer,
  options: RpmFormatOptions = {},
): Promise<{ /** The packages createrepo_c actually read, relative to `root`. */ read: string[] }> {
  const createrepo = options.createrepo ?? Bun.which("createrepo_c", { PATH: process.env.PATH ?? "" });
  if (!createrepo) {
    throw new AppError(
      "CREATEREPO_MISSING",
      "createrepo_c is not installed on the master: install the Debian package createrepo-c (apt-get install createrepo-c)",
      { status: 500 },
    );
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(settings.name)) {
    throw new AppError(
      "INVALID_NAME",
      `repository name ${JSON.stringify(settings.name)} cannot name a cache`,
    );
  }
  // The package list lives outside the served root, so no client ever sees it.
  const work = await mkdtemp(join(tmpdir(), "kiln-createrepo-"));
  const list = join(work, "pkglist");
  const readList = join(work, "read");
  await writeFile(list, packages.map((p) => `${p.path}\n`).join(""));
  // Not --quiet: createrepo_c skips a package it cannot read with only a warning (and exit 0), and the
  // warning is what names it.
  const args = [createrepo, "--no-database", `--pkglist=${list}`, `--read-pkgs-list=${readList}`];
  // The workers read packages in parallel; two keep one core free for the master on small hosts.
  args.push("--workers=2");
  const cache = options.cacheDir ? join(options.cacheDir, settings.name) : undefined;
  const last = cache ? join(cache, "last") : undefined;
  if (last && (await exists(join(last, "repodata", "repomd.xml"))))
    args.push("--update", `--update-md-path=${last}`);
  args.push(root);
  let read: string[];
  let warnings: string;
  try {
    warnings = await runCreaterepo(args, settings.name);
    read = (await readFile(readList, "utf8")).split("\n").filter(Boolean);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  const listed = await primaryCount(root);
  if (listed !== packages.length) {
    const skipped = [...warnings.matchAll(/Cannot read package: (.*)$/gm)].map((m) => m[1]).join("; ");
    throw new AppError(
      "METADATA_FAILED",
      `createrepo_c listed ${listed} of ${packages.length} packages in repository ${settings.name}: ${skipped || "see the master's log"}`,
      { status: 500 },
    );
  }
  if (signer) {
    const repomd = await readFile(join(root, "repodata", "repomd.xml"));
    await writeFile(
      join(root, "repodata", "repomd.xml.asc"),
      await signer.detachSign(new Uint8Array(repomd)),
    );
  }
  if (cache && last) {
    // Keep this run's metadata for the next one; swapped in by rename so a crash leaves the old or new set.
    await mkdir(cache, { recursive: true });
    const next = await mkdtemp(join(cache, "next-"));
    await cp(join(root, "repodata"), join(next, "repodata"), { recursive: true });
    await rm(last, { recursive: true, force: true });
    await rename(next, last);
  }
  return { read };
}

// Runs createrepo_c and returns what it warned on stderr; a non-zero exit is METADATA_FAILED.
async function runCreaterepo(args: string[], repo: string): Promise<string> {
  const proc = Bun.spawn(args, { stdout: "pipe", stderr: "pipe", env: { ...process.env, LC_ALL: "C" } });
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (code !== 0) {
    throw new AppError(
      "METADATA_FAILED",
      `createrepo_c failed for repository ${repo}: ${(err || out).trim()}`,
      {
        status: 500,
      },
    );
  }
  return err;
}

// The package count primary.xml declares on its first line, read without decompressing the whole file.
async function primaryCount(root: string): Promise<number> {
  const repomd = await readFile(join(root, "repodata", "repomd.xml"), "utf8");
  const href = /<data type="primary">[\s\S]*?<location href="([^"]+)"/.exec(repomd)?.[1];
  if (!href)
    throw new AppError("METADATA_FAILED", "createrepo_c wrote a repomd.xml without primary metadata");
  let head = "";
  for await (const chunk of createReadStream(join(root, href)).pipe(createGunzip())) {
    head += (chunk as Buffer).toString("utf8");
    const m = /<metadata [^>]*packages="(\d+)"/.exec(head);
    if (m) return Number(m[1]);
    if (head.length > 64 * 1024) break;
  }
  throw new AppError("METADATA_FAILED", `createrepo_c's ${href} declares no package count`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    // Only absence means "no previous metadata"; anything else (permissions, I/O) must surface.
    if ((coerceError(err) as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw err;
  }
}

/**
 * The RPM format for the repository builder; pass a cache directory to make publishing incremental. Unlike
 * the contract's "metadata from PackageInfo.meta only", createrepo_c reads package files itself: with the
 * cache it reads only the packages that are new or changed since the repository's last publish.
 */
export function createRpmFormat(options: RpmFormatOptions = {}): RepoFormat {
  return {
    format: "rpm",
    read: readRpm,
    compare: compareRpmVersions,
    poolPath: (pkg) => rpmPoolPath(pkg),
    writeMetadata: async (root, settings, packages, signer) => {
      await writeRpmMetadata(root, settings, packages, signer, options);
    },
  };
}

// The .repo file is shared with the worker, which writes one into jobs that use a repository.
export { type RpmRepoFileOptions, rpmRepoFile } from "../protocol/repo-sources.ts";

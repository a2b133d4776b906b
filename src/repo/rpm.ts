// The RPM package format: reading a package's identity from its own header (never its file name), rpm's
// version order, and a repository's metadata through createrepo_c, signed for dnf's repo_gpgcheck.
//
// An RPM file is a 96-byte lead, a signature header, the main header and the payload (see rpm's
// docs/manual/format.md). Both headers share one layout: an 16-byte intro (magic 8e ad e8 01, four reserved
// bytes, the entry count and the store size, big-endian), the entries (tag, type, offset, count; 16 bytes
// each), then the store the entries point into. A package comes from a job, so every count and offset is
// checked against the file before anything is read or allocated.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { cp, mkdir, mkdtemp, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { AppError, coerceError } from "../lib/errors.ts";
import type { PackageInfo, PublishedPackage, RepoFormat, RepoSettings, Signer } from "./format.ts";
import { compareRpmVersions, parseRpmEvr } from "./version.ts";

const LEAD_SIZE = 96;
const LEAD_MAGIC = 0xedabeedb;
const HEADER_MAGIC = 0x8eade801;
const INTRO_SIZE = 16;
const ENTRY_SIZE = 16;
// rpm's own ceilings (HEADER_TAGS_MAX, and HEADER_DATA_MAX for the store is 256 MiB). Kiln takes a lower
// store ceiling: the largest real headers (file lists of kernel or TeX packages) stay well under 64 MiB,
// and a hostile package must not make the master allocate more than that.
const MAX_ENTRIES = 0xffff;
const MAX_SIGNATURE_STORE = 16 * 1024 * 1024;
const MAX_MAIN_STORE = 64 * 1024 * 1024;
// A lead's signature type 5 says a signature header follows, the only kind rpm has written since 1996.
const SIGNATURE_TYPE_HEADER = 5;
// RPMSIGTAG_SHA256: the hex SHA-256 of the main header.
const SIGNATURE_SHA256 = 273;

/** Header tags Kiln reads (rpmtag.h). */
export const RpmTag = {
  NAME: 1000,
  VERSION: 1001,
  RELEASE: 1002,
  EPOCH: 1003,
  SUMMARY: 1004,
  BUILDTIME: 1006,
  LICENSE: 1014,
  URL: 1020,
  ARCH: 1022,
  SOURCERPM: 1044,
} as const;

// Entry types and their element sizes; strings (6, 8, 9) are NUL-terminated and have no fixed size.
const TYPE_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1 };
const STRING = 6;
const STRING_ARRAY = 8;
const I18N_STRING = 9;
const INT32 = 4;

interface Entry {
  tag: number;
  type: number;
  offset: number;
  count: number;
}

/** One parsed header: its entries by tag and its store, already bounds-checked. */
export interface RpmHeader {
  entries: Map<number, Entry>;
  store: Uint8Array;
  /** File offset just past the header (before padding). */
  end: number;
  /** SHA-256 of the header's bytes (intro, index and store), as rpm's header digest covers them. */
  sha256: string;
}

const bad = (file: string, what: string) =>
  new AppError("BAD_PACKAGE", `${basename(file)} is not a valid RPM package: ${what}`, { status: 422 });

// Reads exactly `length` bytes at `position`, refusing before allocating when the file is shorter.
async function readAt(
  fd: Awaited<ReturnType<typeof open>>,
  file: string,
  size: number,
  position: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  if (position + length > size) {
    throw bad(
      file,
      `the ${what} needs ${length} bytes at offset ${position} but the file ends at ${size} (truncated?)`,
    );
  }
  const buf = new Uint8Array(length);
  const { bytesRead } = await fd.read(buf, 0, length, position);
  if (bytesRead !== length) throw bad(file, `the ${what} could not be read in full (the file shrank?)`);
  return buf;
}

async function readHeader(
  fd: Awaited<ReturnType<typeof open>>,
  file: string,
  size: number,
  at: number,
  name: string,
  maxStore: number,
): Promise<RpmHeader> {
  const intro = new DataView((await readAt(fd, file, size, at, INTRO_SIZE, `${name} header`)).buffer);
  if (intro.getUint32(0) !== HEADER_MAGIC) throw bad(file, `no ${name} header magic at offset ${at}`);
  const count = intro.getUint32(8);
  const storeSize = intro.getUint32(12);
  if (count < 1 || count > MAX_ENTRIES) {
    throw bad(file, `the ${name} header claims ${count} entries (1 to ${MAX_ENTRIES} allowed)`);
  }
  if (storeSize > maxStore) {
    throw bad(file, `the ${name} header claims a ${storeSize}-byte store (at most ${maxStore} allowed)`);
  }
  const index = new DataView(
    (await readAt(fd, file, size, at + INTRO_SIZE, count * ENTRY_SIZE, `${name} header's index`)).buffer,
  );
  const storeAt = at + INTRO_SIZE + count * ENTRY_SIZE;
  const store = await readAt(fd, file, size, storeAt, storeSize, `${name} header's store`);
  const entries = new Map<number, Entry>();
  for (let i = 0; i < count; i++) {
    const e: Entry = {
      tag: index.getUint32(i * ENTRY_SIZE),
      type: index.getUint32(i * ENTRY_SIZE + 4),
      offset: index.getUint32(i * ENTRY_SIZE + 8),
      count: index.getUint32(i * ENTRY_SIZE + 12),
    };
    const where = `${name} header entry ${i} (tag ${e.tag})`;
    if (e.type > I18N_STRING) throw bad(file, `${where} has unknown type ${e.type}`);
    if (e.count < 1) throw bad(file, `${where} has no values`);
    if (e.offset >= storeSize)
      throw bad(file, `${where} points at ${e.offset}, beyond the ${storeSize}-byte store`);
    const fixed = TYPE_SIZE[e.type];
    // Each string takes at least its NUL byte, so a count larger than the bytes left is a lie.
    const need = fixed === undefined ? e.count : e.count * fixed;
    if (e.offset + need > storeSize) {
      throw bad(file, `${where} holds ${e.count} values at ${e.offset}, beyond the ${storeSize}-byte store`);
    }
    if (e.type === STRING && e.count !== 1)
      throw bad(file, `${where} is a single string with count ${e.count}`);
    entries.set(e.tag, e);
  }
  const digest = createHash("sha256");
  digest.update(new Uint8Array(intro.buffer));
  digest.update(new Uint8Array(index.buffer));
  digest.update(store);
  return { entries, store, end: storeAt + storeSize, sha256: digest.digest("hex") };
}

// The strings of an entry; every one must end inside the store.
function strings(file: string, h: RpmHeader, e: Entry): string[] {
  if (e.type !== STRING && e.type !== STRING_ARRAY && e.type !== I18N_STRING) {
    throw bad(file, `tag ${e.tag} should hold text but has type ${e.type}`);
  }
  const out: string[] = [];
  let at = e.offset;
  for (let i = 0; i < e.count; i++) {
    const nul = h.store.indexOf(0, at);
    if (nul < 0) throw bad(file, `tag ${e.tag}'s text runs past the end of the header store`);
    out.push(new TextDecoder("utf-8", { fatal: false }).decode(h.store.subarray(at, nul)));
    at = nul + 1;
  }
  return out;
}

/** A header's first string for `tag` (for I18N strings the C locale's), or undefined when the tag is absent. */
export function headerString(file: string, h: RpmHeader, tag: number): string | undefined {
  const e = h.entries.get(tag);
  return e ? strings(file, h, e)[0] : undefined;
}

function headerInt(file: string, h: RpmHeader, tag: number): number | undefined {
  const e = h.entries.get(tag);
  if (!e) return undefined;
  if (e.type !== INT32) throw bad(file, `tag ${tag} should be a 32-bit number but has type ${e.type}`);
  return new DataView(h.store.buffer, h.store.byteOffset).getUint32(e.offset);
}

/** The lead, signature header and main header of an RPM file, validated; throws AppError BAD_PACKAGE. */
export async function readRpmHeaders(
  file: string,
): Promise<{ size: number; source: boolean; signature: RpmHeader; main: RpmHeader }> {
  const size = (await stat(file)).size;
  const fd = await open(file, "r");
  try {
    const lead = new DataView((await readAt(fd, file, size, 0, LEAD_SIZE, "lead")).buffer);
    if (lead.getUint32(0) !== LEAD_MAGIC)
      throw bad(file, "it does not start with the RPM lead magic ed ab ee db");
    if (lead.getUint16(78) !== SIGNATURE_TYPE_HEADER) {
      throw bad(file, `the lead names signature type ${lead.getUint16(78)}, not a header (5)`);
    }
    const signature = await readHeader(fd, file, size, LEAD_SIZE, "signature", MAX_SIGNATURE_STORE);
    // The main header starts at the next 8-byte boundary after the signature header.
    const mainAt = Math.ceil(signature.end / 8) * 8;
    const main = await readHeader(fd, file, size, mainAt, "main", MAX_MAIN_STORE);
    // rpm records the main header's SHA-256 in the signature header (since 4.14); a mismatch means the
    // package was altered or damaged after it was built, and rpm would refuse to install it.
    const recorded = headerString(file, signature, SIGNATURE_SHA256);
    if (recorded !== undefined && recorded !== main.sha256) {
      throw bad(
        file,
        "its header does not match the SHA-256 digest recorded in its signature (altered or damaged)",
      );
    }
    // rpm's own test for a source package (headerIsSource): a binary package names its source rpm.
    return { size, source: !main.entries.has(RpmTag.SOURCERPM), signature, main };
  } finally {
    await fd.close();
  }
}

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
 * With a cache directory the previous run's metadata is reused for every package whose path, size and mtime
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
  const args = [createrepo, "--quiet", "--no-database", `--pkglist=${list}`, `--read-pkgs-list=${readList}`];
  // The workers read packages in parallel; two keep one core free for the master on small hosts.
  args.push("--workers=2");
  const cache = options.cacheDir ? join(options.cacheDir, settings.name) : undefined;
  const last = cache ? join(cache, "last") : undefined;
  if (last && (await exists(join(last, "repodata", "repomd.xml"))))
    args.push("--update", `--update-md-path=${last}`);
  args.push(root);
  let read: string[];
  try {
    await runCreaterepo(args, settings.name);
    read = (await readFile(readList, "utf8")).split("\n").filter(Boolean);
  } finally {
    await rm(work, { recursive: true, force: true });
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
    const next = join(cache, "next");
    await rm(next, { recursive: true, force: true });
    await mkdir(next, { recursive: true });
    await cp(join(root, "repodata"), join(next, "repodata"), { recursive: true });
    await rm(last, { recursive: true, force: true });
    await rename(next, last);
  }
  return { read };
}

async function runCreaterepo(args: string[], repo: string): Promise<void> {
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

/** The RPM format for the repository builder; pass a cache directory to make publishing incremental. */
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

/** What a `.repo` file for one Kiln repository needs. */
export interface RpmRepoFileOptions {
  /** The repository's name in Kiln; becomes the `[section]` id. */
  name: string;
  /** The URL of the repository root (where `repodata/` is), e.g. `http://master:8080/repos/NAME/`. */
  baseurl: string;
  /** The URL of the repository's public key when its metadata is signed; absent means unsigned. */
  keyUrl?: string;
  /** Whether the packages themselves carry rpm signatures (Kiln signs metadata, not packages). */
  packagesSigned?: boolean;
}

/**
 * The text of a dnf/yum `.repo` file (dnf.conf(5)) for `kiln repo show`: a signed repository turns on
 * repo_gpgcheck so dnf verifies repomd.xml against the key; package signatures are checked only when the
 * packages are signed, since Kiln's repositories sign the metadata that carries every package's checksum.
 */
export function rpmRepoFile(o: RpmRepoFileOptions): string {
  const id = o.name.replace(/[^A-Za-z0-9._:-]/g, "_");
  const lines = [
    `[kiln-${id}]`,
    `name=Kiln repository ${o.name}`,
    `baseurl=${o.baseurl}`,
    "enabled=1",
    `gpgcheck=${o.packagesSigned && o.keyUrl ? 1 : 0}`,
    `repo_gpgcheck=${o.keyUrl ? 1 : 0}`,
  ];
  if (o.keyUrl) lines.push(`gpgkey=${o.keyUrl}`);
  return `${lines.join("\n")}\n`;
}

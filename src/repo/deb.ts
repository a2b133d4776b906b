// The Debian package format: a package's identity read from its own control file (never its file name),
// dpkg's version order, and a repository's metadata (Packages, Release, InRelease) written from the
// control fields stored at publish, so regenerating it never reads a package file.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { link, mkdir, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { PackageInfo, PublishedPackage, RepoFormat, RepoSettings, Signer } from "./format.ts";
import { readTar, type TarEntry } from "./tar.ts";
import { compareDebVersions, parseDebVersion, validDebVersion } from "./version.ts";

// Debian Policy 5.6.1 (Source, Package): at least two characters, lowercase letters, digits, "+", "-", ".",
// starting with a letter or digit. Anything else (a slash, "..", a space) could become a path.
const PACKAGE_RE = /^[a-z0-9][a-z0-9+.-]+$/;
// dpkg-architecture(1) names: lowercase letters, digits and "-"; a binary package has exactly one.
const ARCH_RE = /^[a-z0-9][a-z0-9-]*$/;
// A control field name (deb822(5)): printable US-ASCII but ":" and space, not starting with "#" or "-".
const FIELD_RE = /^([!-9;-~][!-9;-~]*):(.*)$/;

/** The largest control file Kiln reads: real ones are a few KiB, long descriptions stay far below this. */
export const MAX_CONTROL = 1024 * 1024;
/** The largest control area (decompressed): md5sums of packages with 100,000 files fit. */
export const MAX_CONTROL_AREA = 64 * 1024 * 1024;
// dpkg-deb reads a real package's control area in milliseconds; a stuck one must not hold a publish.
const DPKG_DEB_TIMEOUT = 60_000;

/**
 * Fields the repository sets in its Packages index from the file it stores; a package that carries them
 * in its control file does not get to choose them, so they are dropped.
 */
const REPOSITORY_FIELDS = new Set([
  "filename",
  "size",
  "md5sum",
  "sha1",
  "sha256",
  "sha512",
  "description-md5",
]);

/** The error for a file that is not a valid Debian package, naming the file and what is wrong with it. */
const bad = (file: string, what: string) =>
  new AppError("BAD_PACKAGE", `${basename(file)} is not a valid Debian package: ${what}`, { status: 422 });

/**
 * Parses a binary package's control file (one deb822 paragraph) into its fields, in order, values as
 * dpkg keeps them (continuation lines joined with "\n"). Refuses what dpkg-deb --build would not write:
 * more than one paragraph, a duplicate field, a line that is neither a field nor a continuation, control
 * characters, invalid UTF-8.
 */
export function parseControl(text: string, fail: (what: string) => Error): Map<string, string> {
  const fields = new Map<string, string>();
  const seen = new Set<string>();
  let last: string | null = null;
  let ended = false;
  const lines = text.split("\n");
  if (lines.at(-1) === "") lines.pop();
  for (const [i, line] of lines.entries()) {
    const where = `line ${i + 1} of the control file`;
    if (/[\u0000-\u0008\u000a-\u001f\u007f]/.test(line)) throw fail(`${where} holds a control character`);
    if (line.trim() === "") {
      if (last !== null) ended = true;
      continue;
    }
    if (ended) throw fail("the control file holds more than one paragraph");
    if (/^[ \t]/.test(line)) {
      if (last === null) throw fail(`${where} continues a field that does not exist`);
      fields.set(last, `${fields.get(last)}\n${line}`);
      continue;
    }
    const m = FIELD_RE.exec(line);
    if (!m || line.startsWith("#") || line.startsWith("-"))
      throw fail(`${where} is not a "Field: value" line`);
    const name = m[1] as string;
    if (seen.has(name.toLowerCase())) throw fail(`the control file has the field ${name} twice`);
    seen.add(name.toLowerCase());
    fields.set(name, (m[2] as string).trim());
    last = name;
  }
  return fields;
}

// The control field `name` whatever its case (field names are case-insensitive, deb822(5)).
function get(fields: Map<string, string>, name: string): string | undefined {
  for (const [k, v] of fields) if (k.toLowerCase() === name.toLowerCase()) return v;
  return undefined;
}

// Runs dpkg-deb --ctrl-tarfile, which checks the ar container and decompresses the control area whatever
// its compression (gzip, xz, zstd, none), and reads the tar it writes: every member's header, the data
// of `control` only.
async function controlMembers(file: string): Promise<TarEntry[]> {
  const dpkgDeb = Bun.which("dpkg-deb", { PATH: process.env.PATH ?? "/usr/bin:/bin" });
  if (!dpkgDeb) {
    throw new AppError(
      "DPKG_MISSING",
      "reading Debian packages needs dpkg-deb on the master: install the Debian package dpkg",
      { status: 500 },
    );
  }
  const proc = Bun.spawn([dpkgDeb, "--ctrl-tarfile", file], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" },
    timeout: DPKG_DEB_TIMEOUT,
  });
  const stderr = new Response(proc.stderr).text();
  // dpkg-deb's own complaint (not an ar archive, a damaged compressed stream) says more than the tar
  // reader's view of what it wrote; when Kiln stopped it (a limit), Kiln's reason is the one to give.
  const dpkgSaid = async () => {
    await proc.exited;
    const said = (await stderr).trim().replace(/^dpkg-deb: (error: )?/, "");
    return proc.signalCode === null && proc.exitCode !== 0 && said ? said : null;
  };
  let entries: TarEntry[];
  try {
    entries = await readTar(proc.stdout, {
      keep: (e) => e.name === "control",
      maxMember: MAX_CONTROL,
      maxTotal: MAX_CONTROL_AREA,
      fail: (what) => bad(file, `its control area: ${what}`),
    });
  } catch (err) {
    if (proc.exitCode === null) proc.kill();
    const said = await dpkgSaid();
    throw said ? bad(file, said) : err;
  }
  // What follows the end-of-archive blocks is not read: dpkg-deb may be waiting to write it.
  if (proc.exitCode === null) proc.kill();
  const said = await dpkgSaid();
  if (said) throw bad(file, said);
  return entries;
}

async function hashes(file: string): Promise<{ sha256: string; md5: string }> {
  const sha = createHash("sha256");
  const md5 = createHash("md5");
  for await (const chunk of createReadStream(file)) {
    sha.update(chunk as Buffer);
    md5.update(chunk as Buffer);
  }
  return { sha256: sha.digest("hex"), md5: md5.digest("hex") };
}

/**
 * Reads a binary package's identity from its control file: Package, Version, Architecture, Source. The
 * control file must be one regular file in the control area (a link, or two of them, is refused: dpkg
 * would install from the last one). `meta` keeps every control field in its order, less those the
 * repository sets itself, plus `MD5sum`, Kiln's own hash of the file.
 */
export async function readDeb(file: string): Promise<PackageInfo> {
  const size = (await stat(file)).size;
  const entries = await controlMembers(file);
  const controls = entries.filter((e) => e.name === "control");
  if (controls.length === 0) throw bad(file, "its control area has no control file");
  if (controls.length > 1) throw bad(file, "its control area holds the control file twice");
  const control = controls[0] as TarEntry;
  if (control.type !== "0" && control.type !== "7") {
    const what =
      control.type === "2" ? "a symlink" : control.type === "1" ? "a hard link" : "not a regular file";
    throw bad(
      file,
      `its control file is ${what}${control.linkname ? ` (to ${JSON.stringify(control.linkname)})` : ""}`,
    );
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(control.data);
  } catch {
    throw bad(file, "its control file is not UTF-8");
  }
  const fields = parseControl(text, (what) => bad(file, what));
  const name = get(fields, "Package");
  const version = get(fields, "Version");
  const arch = get(fields, "Architecture");
  if (!name) throw bad(file, "its control file has no Package field");
  if (!PACKAGE_RE.test(name))
    throw bad(file, `its Package ${JSON.stringify(name.slice(0, 80))} is not a Debian package name`);
  if (!version || !validDebVersion(version))
    throw bad(file, `its Version ${JSON.stringify((version ?? "").slice(0, 80))} is not a Debian version`);
  if (!arch || !ARCH_RE.test(arch))
    throw bad(file, `its Architecture ${JSON.stringify((arch ?? "").slice(0, 80))} is not one architecture`);
  let source: string | undefined;
  const sourceField = get(fields, "Source");
  if (sourceField !== undefined) {
    // "Source: name" or "Source: name (version)" when the binary's version differs from the source's.
    const m = /^([^\s(]+)(?:\s+\(([^)\s]+)\))?$/.exec(sourceField);
    if (!m || !PACKAGE_RE.test(m[1] as string) || (m[2] !== undefined && !validDebVersion(m[2])))
      throw bad(
        file,
        `its Source ${JSON.stringify(sourceField.slice(0, 80))} is not "name" or "name (version)"`,
      );
    source = m[1];
  }
  const { sha256, md5 } = await hashes(file);
  const meta: Record<string, string> = {};
  for (const [k, v] of fields) if (!REPOSITORY_FIELDS.has(k.toLowerCase())) meta[k] = v;
  meta.MD5sum = md5;
  return { format: "deb", name, version, arch, source, size, sha256, meta };
}

/**
 * Where a package lives below the repository root, as Debian's archive lays it out:
 * `pool/COMPONENT/PREFIX/SOURCE/NAME_VERSION_ARCH.deb`, PREFIX the source's first letter (`libx` for
 * lib* sources), VERSION without its epoch. Every part is checked again: a path is made from it.
 */
export function debPoolPath(pkg: PackageInfo, settings: RepoSettings): string {
  const source = pkg.source ?? pkg.name;
  const component = settings.component ?? "main";
  const { upstream, revision } = parseDebVersion(pkg.version);
  const version = revision ? `${upstream}-${revision}` : upstream;
  if (
    !PACKAGE_RE.test(pkg.name) ||
    !PACKAGE_RE.test(source) ||
    !ARCH_RE.test(pkg.arch) ||
    !/^[A-Za-z0-9.+~-]+$/.test(version) ||
    !/^[a-z0-9][a-z0-9._-]*$/.test(component) ||
    component.includes("..")
  ) {
    throw new AppError("BAD_PACKAGE", `refusing an unsafe package path for ${JSON.stringify(pkg.name)}`, {
      status: 422,
    });
  }
  const prefix = source.startsWith("lib") && source.length > 3 ? source.slice(0, 4) : source[0];
  return `pool/${component}/${prefix}/${source}/${pkg.name}_${version}_${pkg.arch}.deb`;
}

/** One Packages stanza: the control fields, the file's place and hashes, the description last (as apt-ftparchive). */
function stanza(p: PublishedPackage): string {
  const lines: string[] = [];
  let description: string | undefined;
  for (const [k, v] of Object.entries(p.meta)) {
    if (k === "MD5sum") continue;
    if (k.toLowerCase() === "description") description = `${k}: ${v}`;
    else lines.push(`${k}: ${v}`);
  }
  lines.push(`Filename: ${p.path}`, `Size: ${p.size}`);
  if (p.meta.MD5sum) lines.push(`MD5sum: ${p.meta.MD5sum}`);
  lines.push(`SHA256: ${p.sha256}`);
  if (description !== undefined) lines.push(description);
  return `${lines.join("\n")}\n`;
}

const byNameThenVersion = (a: PublishedPackage, b: PublishedPackage) =>
  a.name < b.name ? -1 : a.name > b.name ? 1 : compareDebVersions(a.version, b.version);

/** RFC 2822 date in UTC, as Release files carry it (apt reads it with its own parser: the zone is "UTC"). */
const releaseDate = (d: Date) => d.toUTCString().replace("GMT", "UTC");

interface IndexFile {
  /** Relative to dists/DIST. */
  path: string;
  bytes: Uint8Array;
  md5: string;
  sha256: string;
}

async function writeIndex(distDir: string, rel: string, bytes: Uint8Array): Promise<IndexFile> {
  const md5 = createHash("md5").update(bytes).digest("hex");
  const sha256 = createHash("sha256").update(bytes).digest("hex");
  const file = join(distDir, rel);
  const dir = join(file, "..");
  await mkdir(join(dir, "by-hash", "SHA256"), { recursive: true });
  await mkdir(join(dir, "by-hash", "MD5Sum"), { recursive: true });
  await writeFile(file, bytes, { mode: 0o644 });
  // Acquire-By-Hash: the same bytes under their hash, so a client holding an older InRelease still finds
  // the index it names while a newer one is being published (see src/master/repos.ts, snapshots).
  await link(file, join(dir, "by-hash", "SHA256", sha256)).catch(ignoreExists);
  await link(file, join(dir, "by-hash", "MD5Sum", md5)).catch(ignoreExists);
  return { path: rel, bytes, md5, sha256 };
}

const ignoreExists = (err: unknown) => {
  if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
};

/**
 * Writes dists/DIST/{Release,InRelease,Release.gpg} and dists/DIST/COMPONENT/binary-ARCH/Packages(.gz)
 * for every architecture of the repository, from the packages' stored control fields only. An
 * `Architecture: all` package is listed in every architecture's index (and in binary-all when the
 * repository announces `all`), as Debian's archive does.
 */
export async function writeDebMetadata(
  root: string,
  settings: RepoSettings,
  packages: PublishedPackage[],
  signer?: Signer,
  now = new Date(),
): Promise<void> {
  const dist = settings.dist ?? "stable";
  const component = settings.component ?? "main";
  const distDir = join(root, "dists", dist);
  const archs = [...new Set(settings.archs)].sort();
  const sorted = [...packages].sort(byNameThenVersion);
  const indexes: IndexFile[] = [];
  for (const arch of archs) {
    const listed = sorted.filter((p) => p.arch === arch || (arch !== "all" && p.arch === "all"));
    const text = new TextEncoder().encode(listed.map(stanza).join("\n"));
    const base = `${component}/binary-${arch}/Packages`;
    indexes.push(await writeIndex(distDir, base, text));
    indexes.push(await writeIndex(distDir, `${base}.gz`, Bun.gzipSync(text, { level: 9 })));
  }
  const sums = (key: "md5" | "sha256") =>
    indexes.map((f) => ` ${f[key]} ${String(f.bytes.length).padStart(8)} ${f.path}`).join("\n");
  const release = [
    "Origin: Kiln",
    `Label: ${settings.name}`,
    `Suite: ${dist}`,
    `Codename: ${dist}`,
    `Date: ${releaseDate(now)}`,
    `Architectures: ${archs.join(" ")}`,
    `Components: ${component}`,
    `Description: Kiln repository ${settings.name}`,
    "Acquire-By-Hash: yes",
    // Architecture: all packages are in every architecture's index too: a client need not fetch binary-all.
    ...(archs.includes("all") ? ["No-Support-for-Architecture-all: Packages"] : []),
    "MD5Sum:",
    sums("md5"),
    "SHA256:",
    sums("sha256"),
  ].join("\n");
  const releaseText = `${release}\n`;
  await writeFile(join(distDir, "Release"), releaseText, { mode: 0o644 });
  if (signer) {
    await writeFile(join(distDir, "InRelease"), await signer.clearsign(releaseText), { mode: 0o644 });
    await writeFile(join(distDir, "Release.gpg"), await signer.detachSign(releaseText), { mode: 0o644 });
  }
}

/** The Debian format for the repository builder. */
export function createDebFormat(): RepoFormat {
  return {
    format: "deb",
    read: readDeb,
    compare: compareDebVersions,
    poolPath: debPoolPath,
    writeMetadata: (root, settings, packages, signer) => writeDebMetadata(root, settings, packages, signer),
  };
}

/** The sources.list line (one-line style, sources.list(5)) for a Kiln Debian repository. */
export function debSourcesLine(o: { name: string; url: string; dist: string; component: string }): string {
  return `deb [signed-by=/etc/apt/keyrings/${o.name}.asc] ${o.url} ${o.dist} ${o.component}`;
}

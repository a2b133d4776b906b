// Debian packages made byte by byte (ar, tar, gzip/xz/zstd), for the Debian format's tests and the
// repository benchmark: honest packages quickly by the thousand, and hostile ones that dpkg-deb --build
// refuses to make (a control file that is a symlink, two of them, a name with a slash).

/** One member of a tar archive to write. */
export interface TarMember {
  name: string;
  /** "0" regular file (default), "1" hard link, "2" symlink, "5" directory. */
  type?: "0" | "1" | "2" | "5";
  data?: Uint8Array | string;
  linkname?: string;
  mode?: number;
}

const enc = new TextEncoder();
const bytes = (d: Uint8Array | string | undefined) =>
  typeof d === "string" ? enc.encode(d) : (d ?? new Uint8Array());

function octal(h: Uint8Array, at: number, len: number, n: number) {
  h.set(enc.encode(`${n.toString(8).padStart(len - 1, "0")}\0`), at);
}

/** A ustar archive of `members`, in order, ended by two zero blocks. */
export function tarArchive(members: TarMember[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const m of members) {
    const data = m.type === undefined || m.type === "0" ? bytes(m.data) : new Uint8Array();
    const h = new Uint8Array(512);
    const name = enc.encode(m.name);
    if (name.length > 100) throw new Error(`tar member name too long for this writer: ${m.name}`);
    h.set(name, 0);
    octal(h, 100, 8, m.mode ?? (m.type === "5" ? 0o755 : 0o644));
    octal(h, 108, 8, 0);
    octal(h, 116, 8, 0);
    octal(h, 124, 12, data.length);
    octal(h, 136, 12, 1_700_000_000);
    h[156] = (m.type ?? "0").charCodeAt(0);
    if (m.linkname) h.set(enc.encode(m.linkname), 157);
    h.set(enc.encode("ustar\u000000"), 257);
    h.set(enc.encode("root"), 265);
    h.set(enc.encode("root"), 297);
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const c of h) sum += c;
    h.set(enc.encode(`${sum.toString(8).padStart(6, "0")}\0 `), 148);
    parts.push(h, data, new Uint8Array((512 - (data.length % 512)) % 512));
  }
  parts.push(new Uint8Array(1024));
  return Buffer.concat(parts);
}

/** An ar archive (deb(5)'s container) of `members`, in order. */
export function arArchive(members: { name: string; data: Uint8Array }[]): Uint8Array {
  const parts: Uint8Array[] = [enc.encode("!<arch>\n")];
  for (const m of members) {
    const head =
      m.name.padEnd(16) +
      "1700000000".padEnd(12) +
      "0".padEnd(6) +
      "0".padEnd(6) +
      "100644".padEnd(8) +
      String(m.data.length).padEnd(10) +
      "`\n";
    parts.push(enc.encode(head), m.data);
    if (m.data.length % 2) parts.push(enc.encode("\n"));
  }
  return Buffer.concat(parts);
}

/** The compressions dpkg-deb reads. */
export type Compression = "gz" | "xz" | "zst" | "none";

function compress(data: Uint8Array, how: Compression): Uint8Array {
  if (how === "none") return data;
  if (how === "gz") return Bun.gzipSync(data as Uint8Array<ArrayBuffer>);
  if (how === "zst") return Bun.zstdCompressSync(data);
  const xz = Bun.spawnSync(["xz", "-c", "-0"], { stdin: data });
  if (xz.exitCode !== 0) throw new Error(`xz failed: ${xz.stderr.toString()}`);
  return xz.stdout;
}

const suffix = (how: Compression) => (how === "none" ? "" : `.${how}`);

/** A control file's text for a package with these fields (Maintainer and Description filled in). */
export function controlText(f: { name: string; version: string; arch: string; extra?: string }): string {
  return `Package: ${f.name}\nVersion: ${f.version}\nArchitecture: ${f.arch}\nMaintainer: Kiln <kiln@example.invalid>\n${f.extra ?? ""}Description: a package made by Kiln's tests\n a longer description line\n .\n and a second paragraph\n`;
}

/**
 * A .deb: `debian-binary`, control.tar.EXT holding `control` (unless `controlMembers` replaces the whole
 * control area) and data.tar.EXT holding `data` (default: one small file).
 */
export function buildDeb(o: {
  control: string;
  controlMembers?: TarMember[];
  data?: TarMember[];
  compression?: Compression;
}): Uint8Array {
  const how = o.compression ?? "gz";
  const control = tarArchive(
    o.controlMembers ?? [
      { name: "./", type: "5" },
      { name: "./control", data: o.control },
    ],
  );
  const data = tarArchive(
    o.data ?? [
      { name: "./", type: "5" },
      { name: "./usr/", type: "5" },
      { name: "./usr/share/", type: "5" },
      { name: "./usr/share/doc/", type: "5" },
      { name: "./usr/share/doc/kiln-test", data: "hello\n" },
    ],
  );
  return arArchive([
    { name: "debian-binary", data: enc.encode("2.0\n") },
    { name: `control.tar${suffix(how)}`, data: compress(control, how) },
    { name: `data.tar${suffix(how)}`, data: compress(data, how) },
  ]);
}

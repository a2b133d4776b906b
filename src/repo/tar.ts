// A streaming reader of tar archives (ustar, GNU and pax), for the control area of a Debian package. It
// keeps only the members a caller asks for, each up to a size limit, and sees every header of the archive
// so a caller can refuse duplicates: dpkg extracts members in order, so the last of two `control` files
// is the one it would install, whatever the first one says.

/** One member of a tar archive: its normalized name (no leading `./`), its type flag, and its link target. */
export interface TarEntry {
  name: string;
  /** The ustar type flag: "0" a regular file, "1" a hard link, "2" a symlink, "5" a directory, ... */
  type: string;
  size: number;
  linkname: string;
  /** The member's bytes, when the caller kept it; undefined otherwise. */
  data?: Uint8Array;
}

/** What the reader does with what it finds; every refusal is the caller's to phrase (an Error). */
export interface TarReadOptions {
  /** Called with each header before its data is read; returns whether to keep the data. */
  keep(entry: TarEntry): boolean;
  /** The most bytes a kept member may have. */
  maxMember: number;
  /** The most bytes the whole archive may have (a decompression bomb stops here). */
  maxTotal: number;
  /** Makes the error for a problem; the reader stops at the first. */
  fail(what: string): Error;
}

const BLOCK = 512;
// GNU long names and pax headers longer than this are not what a package's control area holds.
const MAX_EXTENDED = 64 * 1024;

const decoder = new TextDecoder("utf-8", { fatal: false });
const field = (b: Uint8Array, at: number, len: number) => {
  const s = b.subarray(at, at + len);
  const nul = s.indexOf(0);
  return decoder.decode(nul < 0 ? s : s.subarray(0, nul));
};

// A numeric field: octal digits (space or NUL terminated), or GNU's base-256 when the first byte has its
// high bit set. Anything else is malformed.
function numeric(b: Uint8Array, at: number, len: number, fail: (w: string) => Error, what: string): number {
  const s = b.subarray(at, at + len);
  if ((s[0] as number) & 0x80) {
    let n = (s[0] as number) & 0x7f;
    for (let i = 1; i < s.length; i++) {
      n = n * 256 + (s[i] as number);
      if (n > Number.MAX_SAFE_INTEGER) throw fail(`a tar header's ${what} is too large`);
    }
    return n;
  }
  const text = field(b, at, len).trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw fail(`a tar header's ${what} ${JSON.stringify(text)} is not a number`);
  return Number.parseInt(text, 8);
}

function checksumOk(h: Uint8Array, fail: (w: string) => Error): boolean {
  const stored = numeric(h, 148, 8, fail, "checksum");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : (h[i] as number);
  return sum === stored;
}

/** `./control` and `control` name one file: the leading `./` (and `/`) goes, as dpkg's extraction does. */
export const normalizeTarName = (name: string) => name.replace(/^(\.\/|\/)+/, "").replace(/\/+$/, "");

// pax records: "LENGTH key=value\n", LENGTH counting the whole record.
function paxRecords(data: Uint8Array, fail: (w: string) => Error): Map<string, string> {
  const out = new Map<string, string>();
  const text = decoder.decode(data);
  let at = 0;
  while (at < text.length) {
    const space = text.indexOf(" ", at);
    const len = Number(text.slice(at, space));
    if (space < 0 || !Number.isInteger(len) || len <= 0 || at + len > text.length)
      throw fail("a pax extended header is malformed");
    const record = text.slice(space + 1, at + len - 1);
    const eq = record.indexOf("=");
    if (eq < 0) throw fail("a pax extended header record has no '='");
    out.set(record.slice(0, eq), record.slice(eq + 1));
    at += len;
  }
  return out;
}

/**
 * Reads the tar archive `stream` to its end and returns every member's header, in order, with the data
 * of those `keep` chose. Refuses (with `fail`) a malformed header, a kept member larger than
 * `maxMember`, and an archive larger than `maxTotal`, stopping before it reads further.
 */
export async function readTar(stream: ReadableStream<Uint8Array>, o: TarReadOptions): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  let buf: Uint8Array = new Uint8Array(0);
  let total = 0;
  // What the parser waits for: a header, or `need` bytes of the current member (kept or skipped).
  let member: { entry: TarEntry; need: number; padded: number; chunks: Uint8Array[] | null } | null = null;
  let extended: { kind: "L" | "x"; need: number; padded: number; chunks: Uint8Array[] } | null = null;
  let longName: string | null = null;
  let pax: Map<string, string> | null = null;
  let ended = false;

  const take = (n: number) => {
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };

  const header = (h: Uint8Array) => {
    if (h.every((c) => c === 0)) {
      ended = true;
      return;
    }
    if (!checksumOk(h, o.fail)) throw o.fail("a tar header's checksum does not match (not a tar archive?)");
    const type = String.fromCharCode(h[156] as number) === "\0" ? "0" : String.fromCharCode(h[156] as number);
    let size = numeric(h, 124, 12, o.fail, "size");
    const magic = field(h, 257, 6);
    let name = field(h, 0, 100);
    if (magic === "ustar") {
      const prefix = field(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    let linkname = field(h, 157, 100);
    if (type === "L" || type === "x" || type === "K") {
      if (size > MAX_EXTENDED) throw o.fail(`a tar extended header of ${size} bytes is too large`);
      extended = { kind: type === "x" ? "x" : "L", need: size, padded: pad(size), chunks: [] };
      // A long link name ("K") is read and dropped: the link's type is what a caller checks.
      if (type === "K") extended.kind = "L";
      return;
    }
    if (type === "g") {
      member = { entry: { name: "", type, size, linkname }, need: size, padded: pad(size), chunks: null };
      return;
    }
    if (longName !== null) name = longName;
    if (pax) {
      name = pax.get("path") ?? name;
      linkname = pax.get("linkpath") ?? linkname;
      const paxSize = pax.get("size");
      if (paxSize !== undefined) {
        if (!/^\d{1,15}$/.test(paxSize)) throw o.fail("a pax size is not a number");
        size = Number(paxSize);
      }
    }
    longName = null;
    pax = null;
    // Links and directories carry no data, whatever their size field says.
    if (type === "1" || type === "2" || type === "5") size = 0;
    const entry: TarEntry = { name: normalizeTarName(name), type, size, linkname };
    entries.push(entry);
    const kept = o.keep(entry);
    if (kept && size > o.maxMember)
      throw o.fail(`${entry.name} is ${size} bytes, more than the ${o.maxMember} allowed`);
    member = { entry, need: size, padded: pad(size), chunks: kept ? [] : null };
  };

  const step = (): boolean => {
    const target = extended ?? member;
    if (target) {
      if (target.need > 0) {
        if (buf.length === 0) return false;
        const part = take(Math.min(target.need, buf.length));
        target.need -= part.length;
        target.padded -= part.length;
        target.chunks?.push(part.slice());
        if (target.need > 0) return false;
      }
      if (target.padded > 0) {
        if (buf.length === 0) return false;
        target.padded -= take(Math.min(target.padded, buf.length)).length;
        if (target.padded > 0) return false;
      }
      if (target === extended) {
        const data = Buffer.concat(extended.chunks);
        if (extended.kind === "L") longName = field(data, 0, data.length);
        else pax = paxRecords(data, o.fail);
        extended = null;
      } else if (member) {
        if (member.chunks) member.entry.data = Buffer.concat(member.chunks);
        member = null;
      }
      return true;
    }
    if (buf.length < BLOCK) return false;
    header(take(BLOCK));
    return !ended;
  };

  const reader = stream.getReader();
  try {
    while (!ended) {
      const { value, done } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > o.maxTotal) throw o.fail(`the archive is larger than ${o.maxTotal} bytes`);
      buf = buf.length ? Buffer.concat([buf, value]) : value;
      while (step()) {}
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  if (member || extended) throw o.fail("the tar archive is truncated");
  return entries;
}

const pad = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

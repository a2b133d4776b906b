// The binary layout of an RPM file, read with every count and offset checked: a package comes from a job,
// so a truncated or hostile header must give BAD_PACKAGE, never a crash or a huge allocation.
//
// An RPM file is a 96-byte lead, a signature header, the main header and the payload (see rpm's
// docs/manual/format.md). Both headers share one layout: a 16-byte intro (magic 8e ad e8 01, four reserved
// bytes, the entry count and the store size, big-endian), the entries (tag, type, offset, count; 16 bytes
// each), then the store the entries point into.
import { createHash } from "node:crypto";
import { open, stat } from "node:fs/promises";
import { basename } from "node:path";
import { AppError } from "../lib/errors.ts";

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

/** The error for a file that is not a valid RPM, naming the file and what is wrong with it. */
export const bad = (file: string, what: string) =>
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

const utf8 = new TextDecoder("utf-8", { fatal: false });

// The first `limit` strings of an entry; each must end inside the store. Decoding stops at the limit, so
// an array of millions of empty strings costs nothing when only the first is wanted.
function strings(file: string, h: RpmHeader, e: Entry, limit = e.count): string[] {
  if (e.type !== STRING && e.type !== STRING_ARRAY && e.type !== I18N_STRING) {
    throw bad(file, `tag ${e.tag} should hold text but has type ${e.type}`);
  }
  const out: string[] = [];
  let at = e.offset;
  for (let i = 0; i < Math.min(e.count, limit); i++) {
    const nul = h.store.indexOf(0, at);
    if (nul < 0) throw bad(file, `tag ${e.tag}'s text runs past the end of the header store`);
    out.push(utf8.decode(h.store.subarray(at, nul)));
    at = nul + 1;
  }
  return out;
}

/** A header's first string for `tag` (for I18N strings the C locale's), or undefined when the tag is absent. */
export function headerString(file: string, h: RpmHeader, tag: number): string | undefined {
  const e = h.entries.get(tag);
  return e ? strings(file, h, e, 1)[0] : undefined;
}

/** A header's 32-bit number for `tag`, or undefined when the tag is absent. */
export function headerInt(file: string, h: RpmHeader, tag: number): number | undefined {
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

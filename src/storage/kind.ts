/*
 * What an artifact is, read from its first bytes, never from its name: a job can call anything
 * `foo.deb`. Package repositories take only `deb` and `rpm`; releases take only `image`.
 */

export const ARTIFACT_KINDS = ["deb", "rpm", "image", "other"] as const;
export type ArtifactKind = (typeof ARTIFACT_KINDS)[number];

/** How many leading bytes `kindOf` needs: the ISO 9660 volume descriptor at 32 KiB is the farthest. */
export const KIND_PROBE_BYTES = 0x8001 + 5;

const ascii = (b: Uint8Array, at: number, text: string) => {
  if (b.length < at + text.length) return false;
  for (let i = 0; i < text.length; i++) if (b[at + i] !== text.charCodeAt(i)) return false;
  return true;
};

/**
 * The kind of a blob from its first KIND_PROBE_BYTES bytes (fewer when it is shorter): deb (an ar archive
 * whose first member is `debian-binary`, deb(5)), rpm (the lead's magic ed ab ee db), image (an
 * ext2/3/4 superblock, squashfs, qcow2, ISO 9660, or a disk with an MBR or a GPT), else other.
 */
export function kindOf(head: Uint8Array): ArtifactKind {
  // deb(5): "!<arch>\n", then the first member's 16-byte name field, "debian-binary" padded (GNU ar
  // may end it with "/").
  if (ascii(head, 0, "!<arch>\n") && ascii(head, 8, "debian-binary")) {
    const rest = head.subarray(8 + 13, 8 + 16);
    if (rest.length === 3 && rest.every((c) => c === 0x20 || c === 0x2f)) return "deb";
  }
  if (head[0] === 0xed && head[1] === 0xab && head[2] === 0xee && head[3] === 0xdb) return "rpm";
  // squashfs: "hsqs" (little-endian 0x73717368); qcow2: "QFI\xfb".
  if (ascii(head, 0, "hsqs")) return "image";
  if (ascii(head, 0, "QFI") && head[3] === 0xfb) return "image";
  // ext2/3/4: the superblock starts at 1024 and its s_magic (0xEF53, little-endian) is at byte 56 of it.
  if (head[1080] === 0x53 && head[1081] === 0xef) return "image";
  // ISO 9660: the first volume descriptor at sector 16 (2048-byte sectors) reads "CD001" from byte 1.
  if (ascii(head, 0x8001, "CD001")) return "image";
  // GPT: "EFI PART" in LBA 1, for 512- or 4096-byte sectors.
  if (ascii(head, 512, "EFI PART") || ascii(head, 4096, "EFI PART")) return "image";
  if (hasMbr(head)) return "image";
  return "other";
}

/**
 * An MBR: the 0x55AA signature at 510 and four partition entries that look like one (boot flag 0x00 or
 * 0x80), at least one of them in use. The signature alone is two bytes any file may hold.
 */
function hasMbr(b: Uint8Array): boolean {
  if (b.length < 512 || b[510] !== 0x55 || b[511] !== 0xaa) return false;
  let used = 0;
  for (let i = 0; i < 4; i++) {
    const e = 446 + i * 16;
    if (b[e] !== 0x00 && b[e] !== 0x80) return false;
    if (b[e + 4] !== 0) used++;
  }
  return used > 0;
}

/** Reads the first bytes of the file at `path` and says its kind. */
export async function kindOfFile(path: string): Promise<ArtifactKind> {
  const head = new Uint8Array(await Bun.file(path).slice(0, KIND_PROBE_BYTES).arrayBuffer());
  return kindOf(head);
}

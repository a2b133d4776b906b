import { dlopen, FFIType, read } from "bun:ffi";
import { closeSync, ftruncateSync, openSync, readSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";

/*
 * Fresh ext4 images without a mkfs per job. An empty ext4 made with the scratch flags on zeroed space is
 * a handful of metadata blocks (about 40 KiB for 16 MiB, 76 KiB for 1 GiB) and zeros everywhere else.
 * So mkfs runs once per size, on a sparse file whose only data blocks are what it wrote; those blocks are
 * kept in memory, and each job's image is new preallocated (zeroed) space with them written at their
 * offsets: byte for byte what mkfs would have made, on a file no job has used. Running mkfs.ext4 and
 * fallocate(1) for every job cost more CPU than everything else the worker does for a sandboxed job.
 */

const symbols = {
  fallocate: { args: [FFIType.i32, FFIType.i32, FFIType.i64, FFIType.i64], returns: FFIType.i32 },
  lseek: { args: [FFIType.i32, FFIType.i64, FFIType.i32], returns: FFIType.i64_fast },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;
let opened: ReturnType<typeof dlopen<typeof symbols>> | null = null;
// Opened on first use, so that merely loading this module (every kiln command does, through its roles)
// never depends on the host's C library.
const libc = () => {
  opened ??= dlopen("libc.so.6", symbols);
  return opened.symbols;
};

// lseek(2) whence values for sparse files (linux/fs.h); ENXIO means "no more data after this offset".
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
const ENOSPC = 28;

/** A formatted image's data blocks: write them at their offsets on zeroed space of the same size. */
export type Ext4Layout = { offset: number; data: Buffer }[];

/** An errno from a libc call through FFI, with the call's name. */
export class SysError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
  ) {
    super(`${call} failed with errno ${errno}${errno === ENOSPC ? " (No space left on device)" : ""}`);
  }
  get noSpace(): boolean {
    return this.errno === ENOSPC;
  }
}

const errno = () => read.i32(libc().__errno_location()!, 0);

/** Allocates [0, size) of fd for real (fallocate(2), mode 0): the blocks exist and read as zeros. */
export function preallocate(fd: number, size: number): void {
  if (libc().fallocate(fd, 0, 0, size) !== 0) throw new SysError("fallocate", errno());
}

/**
 * Formats a sparse temporary file of `size` in `dir` with `mkfs` (the argument list without the target)
 * and returns its data blocks. The file is removed again.
 */
export async function layoutOf(
  dir: string,
  size: number,
  mkfs: (file: string) => Promise<void>,
): Promise<Ext4Layout> {
  // Named like a scratch image, so the start-up sweep removes it should the worker die half-way.
  const file = join(dir, `layout-${size}-${process.pid}-${Math.random().toString(36).slice(2, 8)}.img`);
  const fd = openSync(file, "wx+", 0o600);
  try {
    ftruncateSync(fd, size); // sparse: whatever mkfs does not write stays a hole
    await mkfs(file);
    const layout: Ext4Layout = [];
    for (let at = 0; at < size; ) {
      const start = Number(libc().lseek(fd, at, SEEK_DATA));
      if (start < 0) {
        const e = errno();
        if (e === ENXIO) break;
        throw new SysError("lseek(SEEK_DATA)", e);
      }
      const end = Number(libc().lseek(fd, start, SEEK_HOLE));
      if (end < 0) throw new SysError("lseek(SEEK_HOLE)", errno());
      const data = Buffer.alloc(end - start);
      for (let got = 0; got < data.length; ) {
        const n = readSync(fd, data, got, data.length - got, start + got);
        if (n <= 0) break;
        got += n;
      }
      layout.push({ offset: start, data });
      at = end;
    }
    return layout;
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
}

/** Preallocates the new file `fd` to `size` and writes `layout` into it: a fresh, empty filesystem. */
export function writeImage(fd: number, size: number, layout: Ext4Layout): void {
  preallocate(fd, size);
  for (const { offset, data } of layout) {
    for (let done = 0; done < data.length; )
      done += writeSync(fd, data, done, data.length - done, offset + done);
  }
}

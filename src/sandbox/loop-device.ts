import { dlopen, FFIType, ptr, read } from "bun:ffi";
import { closeSync, constants, openSync, readFileSync } from "node:fs";

// (Bun opens every file close-on-exec, so no descriptor here reaches the launcher or a job.)

/*
 * Attaching a scratch image to a loop device from the worker, so a volume made ahead is ready to mount
 * when its job starts and the launcher only mounts it (--scratch-dev): the attach waits in the kernel
 * (LOOP_CTL_GET_FREE, LOOP_CONFIGURE), which was the longest step of a launch. The device is attached
 * with LO_FLAGS_AUTOCLEAR: it detaches itself once its last user is gone. The worker holds it open until
 * the job's mount holds it; from then on the mount is the last user, and the device goes when the job's
 * mount namespace does. Should the worker die first, its descriptor closes and the device goes as well.
 */

// linux/loop.h
const LOOP_CONFIGURE = 0x4c0a;
const LOOP_CTL_GET_FREE = 0x4c82;
const LO_FLAGS_AUTOCLEAR = 4;
// struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }: 304 bytes,
// with info.lo_flags at 8 + 52 and info.lo_file_name[64] at 8 + 56.
const CONFIG_SIZE = 304;
const FLAGS_AT = 60;
const NAME_AT = 64;
const NAME_SIZE = 64;
const EBUSY = 16;

const symbols = {
  ioctl: { args: [FFIType.i32, FFIType.u64, FFIType.ptr], returns: FFIType.i32 },
  __errno_location: { args: [], returns: FFIType.ptr },
} as const;
let opened: ReturnType<typeof dlopen<typeof symbols>> | null = null;
const libc = () => {
  opened ??= dlopen("libc.so.6", symbols);
  return opened.symbols;
};
const errno = () => read.i32(libc().__errno_location()!, 0);

/** A loop device attached to an image: its path, number, and the descriptor that holds it. */
export interface AttachedLoop {
  device: string;
  nr: number;
  fd: number;
}

/** Attaches `file` (a canonical path) to a free loop device that clears itself; throws with the errno. */
export function attachLoop(file: string): AttachedLoop {
  const image = openSync(file, constants.O_RDWR);
  const ctl = openSync("/dev/loop-control", constants.O_RDWR);
  try {
    const config = new Uint8Array(CONFIG_SIZE);
    const view = new DataView(config.buffer);
    view.setUint32(0, image, true);
    view.setUint32(FLAGS_AT, LO_FLAGS_AUTOCLEAR, true);
    config.set(new TextEncoder().encode(file).subarray(0, NAME_SIZE - 1), NAME_AT);
    // Another process may take the device LOOP_CTL_GET_FREE offered before we configure it: try again.
    for (let attempt = 0; attempt < 64; attempt++) {
      const nr = libc().ioctl(ctl, LOOP_CTL_GET_FREE, null);
      if (nr < 0) throw new Error(`LOOP_CTL_GET_FREE failed with errno ${errno()}`);
      const device = `/dev/loop${nr}`;
      let fd: number;
      try {
        fd = openSync(device, constants.O_RDWR);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "ENOENT" || code === "ENXIO") continue; // removed under us
        throw err;
      }
      if (libc().ioctl(fd, LOOP_CONFIGURE, ptr(config)) === 0) return { device, nr, fd };
      const e = errno();
      closeSync(fd);
      if (e !== EBUSY) throw new Error(`LOOP_CONFIGURE ${device} failed with errno ${e}`);
    }
    throw new Error("no free loop device after 64 attempts");
  } finally {
    // The device holds the image itself now.
    closeSync(ctl);
    closeSync(image);
  }
}

/** True while loop device `nr` is still attached to `file` (sysfs; false once it cleared or moved on). */
export function loopBackedBy(nr: number, file: string): boolean {
  try {
    return readFileSync(`/sys/block/loop${nr}/loop/backing_file`, "utf8").replace(/\n$/, "") === file;
  } catch {
    return false; // Not attached: only a bound loop device has the loop/ directory.
  }
}

// Scratch volumes: each job's /tmp is a filesystem of the size it asked for, so writing past it gives the
// job ENOSPC and never fills the host. This module prepares and frees the backing storage; the native
// launcher mounts it inside the job's mount namespace, or a slot keeper inside its own (slot-keeper.ts), so
// the mount (and, with autoclear, the loop device) goes away with the job or the keeper.
//
// Backends: "loop" (default) is an ext4 image on a preallocated file that the launcher attaches to a loop
// device; "lvm" is a logical volume in a configured volume group; "tmpfs" needs no backing storage (its
// pages are charged to the job's memory cgroup).

import {
  chmodSync,
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  statfsSync,
  statSync,
  unlinkSync,
} from "node:fs";
import { unlink } from "node:fs/promises";
import { join } from "node:path";
import { AppError, coerceError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { type Ext4Layout, layoutOf, preallocate, SysError, writeImage } from "./ext4-image.ts";
import { type AttachedLoop, attachLoop, loopBackedBy } from "./loop-device.ts";

export type ScratchBackend = "loop" | "lvm" | "tmpfs";

/** Where a worker keeps scratch volumes. */
export interface ScratchConfig {
  backend: ScratchBackend;
  /** Directory for loop image files, e.g. DATA/worker/scratch; created 0700. */
  dir: string;
  /** Volume group for the lvm backend. It must belong to this worker alone: sweeps remove its kiln-* LVs. */
  volumeGroup?: string;
}

/**
 * A prepared scratch volume, as handed to the launcher; sizeBytes is the real size after rounding. A loop
 * image attached ahead (attachScratch) has `loop`: the launcher mounts that device, and `loop.fd` holds it
 * until the job's mount does (releaseHold).
 */
export type Scratch =
  | { backend: "loop"; file: string; sizeBytes: number; loop?: AttachedLoop & { held: boolean } }
  | { backend: "lvm"; device: string; lv: string; vg: string; sizeBytes: number }
  | { backend: "tmpfs"; sizeBytes: number };

const MiB = 1024 * 1024;

// Hosts keep 5% of the scratch filesystem free so that scratch images can never starve the worker's own
// state (logs, outbox, template cache) that shares the data disk.
const RESERVE_FRACTION = 0.05;

// After `losetup -d`, a loop device whose filesystem is still mounted stays attached (the kernel turns the
// detach into autoclear) until its last user goes; a namespace being torn down needs a moment.
const LOOP_RELEASE_TIMEOUT_MS = 2_000;

const NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
const IMAGE = /^[a-z0-9][a-z0-9-]{0,62}\.img$/;
const LV_PREFIX = "kiln-";

// mkfs.ext4 flags, measured on this project's machines (8 to 10 ms for 64 MiB and 1 GiB alike):
// - no journal: the volume dies with the job, so crash consistency buys nothing and costs writes;
// - 4 KiB blocks even below 512 MiB, where mke2fs would otherwise pick the 1 KiB "small" profile;
// - no resize_inode: scratch volumes are never grown, so its reserved GDT blocks are wasted space;
// - one inode per 16 KiB, as mke2fs uses from 512 MiB up: below that its "small" profile would give one
//   per 4 KiB block and spend 6% of the volume on inode tables;
// - -m 0: no root-reserved blocks, the job gets the whole size;
// - nodiscard: on an image file mke2fs "discards" by punching holes, which silently undoes the
//   preallocation (du dropped from 64 MiB to 376 KiB) and with it the guarantee that the space exists.
const MKFS_COMMON = "-q -F -t ext4 -b 4096 -i 16384 -O ^has_journal,^resize_inode -m 0".split(" ");
// A freshly fallocated file reads as zeros, so mke2fs may mark the inode tables zeroed and the kernel's
// lazy-init thread has nothing to write in the background while the job runs.
const MKFS_LOOP = [...MKFS_COMMON, "-E", "assume_storage_prezeroed=1,nodiscard", "-L", "kiln-scratch"];
// A reused LV is not zeroed (lvcreate -Z n), so the inode tables are left to lazy init instead; mount with
// noinit_itable to keep that thread from writing during the job.
const MKFS_LVM = [...MKFS_COMMON, "-E", "lazy_itable_init=1,nodiscard", "-L", "kiln-scratch"];

/**
 * Prepares a scratch volume of at least sizeBytes (rounded up to whole MiB) named after `name`, replacing
 * a leftover of the same name. For loop images it refuses, before writing anything, a size that would leave
 * the host less than 5% of the filesystem free, and guarantees the space is allocated, not sparse.
 */
/** The real size of a volume asked for with sizeBytes: whole MiB, rounded up. */
export function scratchSize(sizeBytes: number): number {
  return Math.ceil(sizeBytes / MiB) * MiB;
}

export async function createScratch(cfg: ScratchConfig, name: string, sizeBytes: number): Promise<Scratch> {
  if (!NAME.test(name)) {
    const hint = 'expected lowercase letters, digits and "-"';
    throw new AppError("SCRATCH_INVALID_NAME", `invalid scratch name ${JSON.stringify(name)}: ${hint}`);
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 1) {
    const hint = "expected a positive whole number of bytes";
    throw new AppError("SCRATCH_INVALID_SIZE", `invalid scratch size ${sizeBytes}: ${hint}`);
  }
  const size = scratchSize(sizeBytes);
  switch (cfg.backend) {
    case "tmpfs":
      return { backend: "tmpfs", sizeBytes: size };
    case "loop":
      return createLoopImage(cfg, name, size);
    case "lvm":
      return createLogicalVolume(cfg, name, size);
  }
}

async function createLoopImage(cfg: ScratchConfig, name: string, size: number): Promise<Scratch> {
  mkdirSync(cfg.dir, { recursive: true, mode: 0o700 });
  chmodSync(cfg.dir, 0o700);
  // Canonical, so the path handed to the launcher is the one the kernel and losetup report for the device.
  const file = join(realpathSync(cfg.dir), `${name}.img`);
  // A leftover under this name (names repeat after a restart) is detached and deleted first. A name with
  // no file has nothing to look for, and looking means reading every loop device of the host: a cost that
  // grew with the host's devices on every job. A deleted image that still pins a device was found by the
  // start-up sweep.
  if (existsSync(file)) await destroyLoopImage(file);
  checkFreeSpace(cfg.dir, size);
  const fd = openSync(file, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
  try {
    // Preallocated, not sparse: a sparse image would let the job find out about a full host disk as I/O
    // errors inside its /tmp instead of as a clear refusal here.
    if (size <= LAYOUT_MAX_BYTES) {
      const layout = await layoutFor(cfg.dir, size);
      await allocating(cfg.dir, file, size, () => writeImage(fd, size, layout));
    } else {
      await allocating(cfg.dir, file, size, () => preallocate(fd, size));
      await runOk(["mkfs.ext4", ...MKFS_LOOP, file]);
    }
  } catch (error) {
    unlinkSync(file);
    throw error;
  } finally {
    closeSync(fd);
  }
  return { backend: "loop", file, sizeBytes: size };
}

// Formats are kept for sizes up to this (each is a few dozen KiB of metadata); bigger volumes, which are
// rare and slow to fill anyway, run mkfs on their own image.
const LAYOUT_MAX_BYTES = 1024 * MiB;
// Distinct sizes whose format is kept; the oldest is dropped first.
const LAYOUT_CACHE_SIZES = 16;
const layouts = new Map<string, Promise<Ext4Layout>>();

/** The format of an empty scratch filesystem of `size`, made once per size with mkfs.ext4. */
function layoutFor(dir: string, size: number): Promise<Ext4Layout> {
  const key = `${dir}\0${size}`;
  let layout = layouts.get(key);
  if (layout === undefined) {
    layout = layoutOf(dir, size, async (file) => {
      await runOk(["mkfs.ext4", ...MKFS_LOOP, file]);
    });
    // A failed format is not kept: the next volume tries again.
    layout.catch(() => layouts.delete(key));
    layouts.set(key, layout);
    for (const old of layouts.keys()) {
      if (layouts.size <= LAYOUT_CACHE_SIZES) break;
      layouts.delete(old);
    }
  }
  return layout;
}

// Runs `allocate`, turning a failed fallocate(2) into the error the operator can act on.
async function allocating(dir: string, file: string, size: number, allocate: () => void): Promise<void> {
  try {
    allocate();
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    // Two slots can pass the free-space check at once; the loser learns here.
    if (error.noSpace) {
      throw noSpace(`no space left in ${dir} for a ${formatSize(size)} scratch volume: ${error.message}`);
    }
    const hint = `the filesystem of ${dir} must support fallocate`;
    throw new AppError("SCRATCH_FAILED", `cannot preallocate ${file} (${hint}): ${error.message}`, {
      status: 500,
      cause: error,
    });
  }
}

function checkFreeSpace(dir: string, size: number): void {
  const fs = statfsSync(dir);
  // bavail, not bfree: the blocks an unprivileged writer may use are what can actually be preallocated on
  // filesystems that reserve blocks for another uid.
  const free = fs.bavail * fs.bsize;
  const total = fs.blocks * fs.bsize;
  const reserve = Math.ceil(total * RESERVE_FRACTION);
  if (size > free - reserve) {
    throw noSpace(
      `not enough space in ${dir} for a ${formatSize(size)} scratch volume: ${formatSize(free)} free of ` +
        `${formatSize(total)}, and ${formatSize(reserve)} (5%) is kept in reserve`,
    );
  }
}

async function createLogicalVolume(cfg: ScratchConfig, name: string, size: number): Promise<Scratch> {
  const vg = cfg.volumeGroup;
  if (vg === undefined || vg === "") {
    throw new AppError("SCRATCH_NO_VOLUME_GROUP", "the lvm scratch backend needs a volumeGroup", {
      status: 500,
    });
  }
  // Without the device-mapper driver LVM can write metadata but never make a device; say so plainly
  // rather than relaying lvcreate's "striped: Required device-mapper target(s) not detected".
  if (!/ device-mapper$/m.test(readFileSync("/proc/misc", "utf8"))) {
    const message = "the lvm scratch backend needs the kernel's device-mapper driver, which this host lacks";
    throw new AppError("SCRATCH_NO_DEVICE_MAPPER", message, { status: 500 });
  }
  const lv = `${LV_PREFIX}${name}`;
  await removeLogicalVolume(vg, lv);
  // -W y wipes any filesystem signature a previous LV left on these extents, so nothing (blkid, a
  // confused udev rule) mistakes the new volume for the old one before mkfs overwrites it. -Z n skips
  // zeroing the first 4 KiB, which mkfs rewrites anyway. The old data itself stays unreadable: the job
  // only sees files through ext4, which never returns blocks it has not written.
  const created = await run(["lvcreate", "-y", "-W", "y", "-Z", "n", "-L", `${size}b`, "-n", lv, vg]);
  if (created.exitCode !== 0) {
    const message = `cannot create a ${formatSize(size)} scratch volume in ${vg}: ${created.stderr.trim()}`;
    if (/insufficient free space/i.test(created.stderr)) throw noSpace(message);
    throw new AppError("SCRATCH_FAILED", message, { status: 500 });
  }
  try {
    const device = `/dev/${vg}/${lv}`;
    await ensureDeviceNode(vg, lv, device);
    await runOk(["mkfs.ext4", ...MKFS_LVM, device]);
    // LVM rounds the size up to whole extents; report what the job really gets.
    const actual = await runOk([
      "lvs",
      "--noheadings",
      "--nosuffix",
      "--units=b",
      "-olv_size",
      `${vg}/${lv}`,
    ]);
    return { backend: "lvm", device, lv, vg, sizeBytes: Number(actual.trim()) };
  } catch (error) {
    await removeLogicalVolume(vg, lv);
    throw error;
  }
}

// Without udev (containers, minimal hosts) nobody may create /dev/VG/LV; activation and vgmknodes do it
// themselves when udev is absent.
async function ensureDeviceNode(vg: string, lv: string, device: string): Promise<void> {
  if (existsSync(device)) return;
  await runOk(["lvchange", "-ay", `${vg}/${lv}`]);
  if (existsSync(device)) return;
  await runOk(["vgmknodes", vg]);
  if (!existsSync(device)) {
    const message = `${device} did not appear after activating ${vg}/${lv}`;
    throw new AppError("SCRATCH_FAILED", message, { status: 500 });
  }
}

/**
 * Attaches a loop image to a loop device that clears itself once unused, held by this process until
 * releaseHold; a no-op for the other backends. The launcher then only mounts it (--scratch-dev).
 */
export function attachScratch(s: Scratch): Scratch {
  if (s.backend !== "loop" || s.loop) return s;
  try {
    return { ...s, loop: { ...attachLoop(s.file), held: true } };
  } catch (error) {
    throw new AppError(
      "SCRATCH_FAILED",
      `cannot attach ${s.file} to a loop device: ${coerceError(error).message}`,
      {
        status: 500,
        cause: error,
      },
    );
  }
}

/**
 * Lets go of this process's hold on the volume's loop device: once the job's mount holds it (the launcher
 * said "ready"), or when it will never be mounted (the device then detaches at once). Idempotent.
 */
export function releaseHold(s: Scratch): void {
  if (s.backend !== "loop" || !s.loop?.held) return;
  s.loop.held = false;
  closeSync(s.loop.fd);
}

/**
 * Frees a scratch volume: for loop images, detaches any loop device still backed by the file, then
 * deletes it; for LVM, removes the logical volume. Idempotent, and safe after a crash at any point.
 */
export async function destroyScratch(cfg: ScratchConfig, s: Scratch): Promise<void> {
  await detachScratch(s);
  await removeScratch(cfg, s);
}

/**
 * The first half of destroyScratch: afterwards no loop device holds the image, so nothing of the job that
 * used it is left (the file itself is only disk space). A no-op for LVM and tmpfs.
 */
export async function detachScratch(s: Scratch): Promise<void> {
  if (s.backend !== "loop") return;
  releaseHold(s);
  // The device attached ahead is the only one that ever held the image, and it clears itself as the
  // job's mount namespace goes (the launcher waits for that before it exits): look at it alone, and fall
  // back to the search of every device only when it does not clear.
  if (s.loop) {
    const deadline = performance.now() + LOOP_RELEASE_TIMEOUT_MS;
    while (loopBackedBy(s.loop.nr, s.file) && performance.now() < deadline) await Bun.sleep(2);
    if (!loopBackedBy(s.loop.nr, s.file)) return;
  }
  await detachLoopImage(s.file);
}

/** The second half of destroyScratch, once detachScratch is done: deletes the image, or removes the LV. */
export async function removeScratch(_cfg: ScratchConfig, s: Scratch): Promise<void> {
  if (s.backend === "loop") await removeImage(s.file);
  else if (s.backend === "lvm") await removeLogicalVolume(s.vg, s.lv);
}

async function destroyLoopImage(file: string): Promise<void> {
  await detachLoopImage(file);
  await removeImage(file);
}

async function detachLoopImage(file: string): Promise<void> {
  const deadline = performance.now() + LOOP_RELEASE_TIMEOUT_MS;
  for (let attempt = 0; ; attempt++) {
    const devices = await loopDevicesOf(file);
    if (devices.length === 0) break;
    if (performance.now() > deadline) {
      // Keep the file: with it gone, nothing could find the loop device again.
      throw new AppError(
        "SCRATCH_BUSY",
        `scratch image ${file} is still attached to ${devices.join(", ")}; is it mounted in a namespace ` +
          "that is still alive? It will be retried by the next sweep",
        { status: 500 },
      );
    }
    // Detach once; repeating would not help a device that is still mounted, only waiting does.
    if (attempt === 0) for (const device of devices) await run(["losetup", "--detach", device]);
    else await Bun.sleep(10);
  }
}

// On a file system mounted with `discard` a preallocated image takes milliseconds to delete: on a thread
// of the runtime's pool, not on the one that serves everything else.
async function removeImage(file: string): Promise<void> {
  try {
    await unlink(file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
}

// Loop devices backed by this very file, read from sysfs (where losetup(8) reads them too) rather than by
// running losetup: this runs after every job, and a process per call cost more than the rest of the
// clean-up. A device matches by path, or by device and inode for a file attached through another path.
// A file deleted while attached (its data dir removed under a running worker) still pins its device: the
// kernel then reports the path with " (deleted)", which matches too, or the device would be lost for good.
async function loopDevicesOf(file: string): Promise<string[]> {
  let self: { dev: number; ino: number } | null = null;
  try {
    self = statSync(file);
  } catch {
    // Gone: only a device that still names it as deleted can be ours.
  }
  return loopDevicesWhere(
    (back) => back === file || back === `${file}${DELETED}` || (self !== null && sameFile(back, self)),
  );
}

const DELETED = " (deleted)";

function loopDevicesWhere(match: (backingFile: string) => boolean): string[] {
  const found: string[] = [];
  for (const name of readdirSync("/sys/block").filter((n) => /^loop\d+$/.test(n))) {
    let back: string;
    try {
      back = readFileSync(`/sys/block/${name}/loop/backing_file`, "utf8").replace(/\n$/, "");
    } catch {
      continue; // Not attached: only a bound loop device has the loop/ directory.
    }
    if (match(back)) found.push(`/dev/${name}`);
  }
  return found;
}

function sameFile(path: string, st: { dev: number; ino: number }): boolean {
  try {
    const other = statSync(path);
    return other.dev === st.dev && other.ino === st.ino;
  } catch {
    return false; // Deleted, or a path only another mount namespace can resolve.
  }
}

async function removeLogicalVolume(vg: string, lv: string): Promise<void> {
  const removed = await run(["lvremove", "-y", `${vg}/${lv}`]);
  if (removed.exitCode === 0 || /Failed to find logical volume/i.test(removed.stderr)) return;
  const message = `cannot remove scratch volume ${vg}/${lv}: ${removed.stderr.trim()}`;
  throw new AppError("SCRATCH_BUSY", message, { status: 500 });
}

/**
 * Removes every scratch volume an earlier run left behind: each image in cfg.dir (detaching its loop
 * devices) and each kiln-* logical volume in cfg.volumeGroup. Returns the image paths and VG/LV names.
 */
export async function sweepScratch(cfg: ScratchConfig): Promise<string[]> {
  const removed: string[] = [];
  // One stuck volume must not keep the others from being freed: try all, then report every failure.
  const failures: unknown[] = [];
  const attempt = async (what: string, remove: () => Promise<void>) => {
    try {
      await remove();
      removed.push(what);
    } catch (error) {
      failures.push(error);
    }
  };
  if (existsSync(cfg.dir)) {
    const dir = realpathSync(cfg.dir);
    const images = readdirSync(dir).filter((n) => IMAGE.test(n));
    for (const name of images.sort()) await attempt(join(dir, name), () => destroyLoopImage(join(dir, name)));
    // Images deleted while attached are not in the directory any more, but their devices still are.
    const orphans = loopDevicesWhere((back) => back.startsWith(`${dir}/`) && back.endsWith(DELETED));
    for (const device of orphans) {
      await attempt(device, async () => {
        await runOk(["losetup", "--detach", device]);
      });
    }
  }
  const vg = cfg.volumeGroup;
  if (vg !== undefined && vg !== "") {
    const out = await runOk(["lvs", "--noheadings", "-o", "lv_name", vg]);
    const lvs = out.split("\n").map((l) => l.trim());
    for (const lv of lvs.filter((l) => l.startsWith(LV_PREFIX)).sort()) {
      await attempt(`${vg}/${lv}`, () => removeLogicalVolume(vg, lv));
    }
  }
  if (failures.length > 0) {
    const reasons = failures.map((e) => coerceError(e).message).join("; ");
    const message = `could not remove ${failures.length} leftover scratch volume(s): ${reasons}`;
    throw new AppError("SCRATCH_SWEEP_FAILED", message, { status: 500, cause: new AggregateError(failures) });
  }
  return removed;
}

interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

async function run(cmd: string[]): Promise<RunResult> {
  const proc = Bun.spawn(cmd, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    // A fixed environment: C messages (matched above), and no LVM warning about descriptors it inherits.
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", LVM_SUPPRESS_FD_WARNINGS: "1" },
  });
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { exitCode, stdout, stderr };
}

async function runOk(cmd: string[]): Promise<string> {
  const result = await run(cmd);
  if (result.exitCode !== 0) {
    const message = `${cmd.join(" ")} failed with exit code ${result.exitCode}: ${result.stderr.trim()}`;
    throw new AppError("SCRATCH_FAILED", message, { status: 500 });
  }
  return result.stdout;
}

// 507 Insufficient Storage (RFC 4918, section 11.5): the request is fine, this host cannot hold it now.
function noSpace(message: string): AppError {
  return new AppError("SCRATCH_NO_SPACE", message, { status: 507 });
}

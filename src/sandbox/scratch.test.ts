import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createScratch, destroyScratch, type ScratchConfig, sweepScratch } from "./scratch.ts";

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  console.warn("scratch.test.ts: not running as root, so the tests that create volumes are skipped");
}

// A fixed environment for the tools the tests run; LVM otherwise warns about descriptors Bun passes on.
const ENV = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C", LVM_SUPPRESS_FD_WARNINGS: "1" };

function sh(cmd: string[]) {
  const r = Bun.spawnSync(cmd, { env: ENV, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  return { exitCode: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

function shOk(cmd: string[]): string {
  const r = sh(cmd);
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

// Named here, created in beforeAll: a describe body also runs when its tests are skipped.
function uniqueTempPath(prefix: string): string {
  return join(tmpdir(), `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
}

// Loop devices whose backing file lies under dir (the kernel's view, deleted files included).
function loopsUnder(dir: string): string[] {
  return shOk(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"])
    .split("\n")
    .filter((line) => line.includes(` ${dir}/`));
}

describe("createScratch arguments", () => {
  const cfg: ScratchConfig = { backend: "tmpfs", dir: "/nonexistent/kiln-scratch" };

  test("names that could leave the scratch directory or the kiln- namespace are refused", async () => {
    for (const bad of ["", "../x", "a/b", "Slot", ".img", "-x", "slot 0", "x".repeat(64)]) {
      await expect(createScratch(cfg, bad, MiB)).rejects.toThrow("invalid scratch name");
    }
  });

  test("sizes must be positive whole bytes", async () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      await expect(createScratch(cfg, "slot-0", bad)).rejects.toThrow("invalid scratch size");
    }
  });

  test("tmpfs needs no backing storage and never touches the disk", async () => {
    expect(await createScratch(cfg, "slot-0", 64 * MiB)).toEqual({ backend: "tmpfs", sizeBytes: 64 * MiB });
    expect(await createScratch(cfg, "slot-0", 1000)).toEqual({ backend: "tmpfs", sizeBytes: MiB });
    expect(existsSync(cfg.dir)).toBe(false);
    await destroyScratch(cfg, { backend: "tmpfs", sizeBytes: MiB });
  });
});

describe.skipIf(!isRoot)("loop scratch volumes (root)", () => {
  const base = uniqueTempPath("kiln-scratch-test");
  const cfg: ScratchConfig = { backend: "loop", dir: join(base, "scratch") };

  beforeAll(() => mkdirSync(base, { mode: 0o700 }));

  // Every test destroys what it made; this only acts for a test that failed half-way.
  afterEach(() => {
    for (const line of loopsUnder(base)) sh(["losetup", "--detach", line.split(" ")[0] ?? ""]);
    rmSync(cfg.dir, { recursive: true, force: true });
  });

  afterAll(() => {
    const leftovers = loopsUnder(base);
    rmSync(base, { recursive: true, force: true });
    expect(leftovers).toEqual([]);
  });

  test("a loop volume is a preallocated, root-only ext4 image that gives ENOSPC at its size", async () => {
    const s = await createScratch(cfg, "slot-0", 64 * MiB);
    if (s.backend !== "loop") throw new Error("expected a loop volume");
    expect(s.sizeBytes).toBe(64 * MiB);
    const st = statSync(s.file);
    expect(st.mode & 0o777).toBe(0o600);
    expect(statSync(cfg.dir).mode & 0o777).toBe(0o700);
    expect(st.size).toBe(64 * MiB);
    // Allocated, not sparse: the space is the host's promise to the job.
    expect(st.blocks * 512).toBeGreaterThanOrEqual(64 * MiB);

    // A private mount namespace, so nothing stays mounted if the test dies half-way.
    const mnt = join(base, "mnt");
    const script = [
      "set -e",
      `mkdir -p ${mnt}`,
      `mount -o loop ${s.file} ${mnt}`,
      `findmnt -n -o FSTYPE ${mnt}`,
      `stat -f -c '%b %S' ${mnt}`,
      `if dd if=/dev/zero of=${mnt}/fill bs=1M count=100 2>${base}/dd.err; then echo dd=ok; else echo dd=failed; fi`,
      `umount ${mnt}`,
    ].join("\n");
    const [fsType = "", blocksLine = "", dd = ""] = shOk([
      "unshare",
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      script,
    ])
      .trim()
      .split("\n");
    expect(fsType).toBe("ext4");
    const [blocks = 0, blockSize = 0] = blocksLine.split(" ").map(Number);
    expect(blocks * blockSize).toBeGreaterThan(60 * MiB);
    expect(blocks * blockSize).toBeLessThanOrEqual(64 * MiB);
    expect(dd).toBe("dd=failed");
    expect(readFileSync(join(base, "dd.err"), "utf8")).toContain("No space left on device");

    await destroyScratch(cfg, s);
    expect(existsSync(s.file)).toBe(false);
    expect(loopsUnder(base)).toEqual([]);
  });

  test("every volume is a fresh, clean filesystem: what one job wrote is never in the next one's", async () => {
    // 16 MiB comes from the kept format of its size, 1025 MiB from a mkfs of its own.
    for (const size of [16 * MiB, 1025 * MiB]) {
      const first = await createScratch(cfg, "fresh-a", size);
      const second = await createScratch(cfg, "fresh-b", size);
      if (first.backend !== "loop" || second.backend !== "loop") throw new Error("expected loop volumes");
      const mnt = join(base, "mnt-fresh");
      const script = [
        "set -e",
        `mkdir -p ${mnt}`,
        `mount -o loop ${first.file} ${mnt}`,
        `echo secret > ${mnt}/left-behind`,
        `umount ${mnt}`,
        `mount -o loop ${second.file} ${mnt}`,
        `ls -A ${mnt}`,
        `umount ${mnt}`,
      ].join("\n");
      expect(shOk(["unshare", "-m", "--propagation", "private", "sh", "-c", script]).trim()).toBe(
        "lost+found",
      );
      for (const s of [first, second]) {
        // -n: check only; exit 0 means the filesystem is consistent.
        expect(sh(["e2fsck", "-fn", s.file]).exitCode).toBe(0);
        expect(statSync(s.file).blocks * 512).toBeGreaterThanOrEqual(size);
        await destroyScratch(cfg, s);
      }
    }
    expect(readdirSync(cfg.dir)).toEqual([]);
  }, 30_000);

  test("destroyScratch detaches a loop device still backed by the image, and is safe twice", async () => {
    const s = await createScratch(cfg, "slot-1", 16 * MiB);
    if (s.backend !== "loop") throw new Error("expected a loop volume");
    const device = shOk(["losetup", "--find", "--show", s.file]).trim();
    expect(loopsUnder(base)).toHaveLength(1);
    await destroyScratch(cfg, s);
    expect(existsSync(s.file)).toBe(false);
    expect(loopsUnder(base)).toEqual([]);
    expect(shOk(["losetup", "--list", "--noheadings", "--output", "NAME"])).not.toContain(`${device}\n`);
    await destroyScratch(cfg, s);
  });

  test("destroyScratch also finds a loop device attached through another path to the image", async () => {
    const s = await createScratch(cfg, "slot-3", 8 * MiB);
    if (s.backend !== "loop") throw new Error("expected a loop volume");
    const alias = join(base, "alias");
    mkdirSync(alias, { recursive: true });
    shOk(["mount", "--bind", cfg.dir, alias]);
    try {
      const device = shOk(["losetup", "--find", "--show", join(alias, "slot-3.img")]).trim();
      // The kernel names the backing file by the path it was opened through, not the image's own path.
      expect(readFileSync(`/sys/block/${device.slice(5)}/loop/backing_file`, "utf8")).toStartWith(alias);
      await destroyScratch(cfg, s);
      expect(existsSync(s.file)).toBe(false);
      expect(loopsUnder(alias)).toEqual([]);
    } finally {
      shOk(["umount", "--lazy", alias]); // lazy: a device a failed assertion left attached keeps it busy
    }
  });

  test("createScratch replaces a leftover image of the same name", async () => {
    await createScratch(cfg, "slot-2", 8 * MiB);
    const s = await createScratch(cfg, "slot-2", 16 * MiB);
    expect(s.sizeBytes).toBe(16 * MiB);
    expect(readdirSync(cfg.dir)).toEqual(["slot-2.img"]);
    await destroyScratch(cfg, s);
  });

  test("a volume the disk cannot hold, or that would eat into the 5% reserve, is refused before any write", async () => {
    const fs = statfsSync(base);
    const free = fs.bavail * fs.bsize;
    const reserve = fs.blocks * fs.bsize * 0.05;
    const tooBig = Math.ceil((free + 1024 * MiB) / MiB) * MiB;
    const intoReserve = Math.floor((free - reserve / 2) / MiB) * MiB;
    for (const size of [tooBig, intoReserve]) {
      const attempt = createScratch(cfg, "huge", size);
      await expect(attempt).rejects.toThrow(`not enough space in ${cfg.dir} for a `);
      await expect(attempt).rejects.toThrow("is kept in reserve");
      await expect(attempt).rejects.toMatchObject({ code: "SCRATCH_NO_SPACE", status: 507 });
    }
    expect(readdirSync(cfg.dir)).toEqual([]);
  });

  test("sweepScratch removes every leftover image, detaching loop devices, and leaves other files alone", async () => {
    const a = await createScratch(cfg, "slot-a", 8 * MiB);
    const b = await createScratch(cfg, "slot-b", 8 * MiB);
    if (a.backend !== "loop" || b.backend !== "loop") throw new Error("expected loop volumes");
    shOk(["losetup", "--find", b.file]);
    writeFileSync(join(cfg.dir, "notes.txt"), "not a scratch image");
    expect(await sweepScratch(cfg)).toEqual([a.file, b.file]);
    expect(readdirSync(cfg.dir)).toEqual(["notes.txt"]);
    expect(loopsUnder(base)).toEqual([]);
    expect(await sweepScratch(cfg)).toEqual([]);
    rmSync(join(cfg.dir, "notes.txt"));
  });

  test("an image deleted while attached still has its loop device detached, by destroy and by the sweep", async () => {
    const a = await createScratch(cfg, "gone-a", 8 * MiB);
    const b = await createScratch(cfg, "gone-b", 8 * MiB);
    if (a.backend !== "loop" || b.backend !== "loop") throw new Error("expected loop volumes");
    shOk(["losetup", "--find", a.file]);
    shOk(["losetup", "--find", b.file]);
    // Someone removes the files under a running worker: the devices stay, naming the files as deleted.
    rmSync(a.file);
    rmSync(b.file);
    expect(loopsUnder(base).length).toBe(2);
    await destroyScratch(cfg, a);
    expect(loopsUnder(base).map((l) => l.includes("gone-a"))).toEqual([false]);
    expect((await sweepScratch(cfg)).length).toBe(1);
    expect(loopsUnder(base)).toEqual([]);
  });

  test("sweepScratch of a directory that does not exist finds nothing", async () => {
    expect(await sweepScratch({ backend: "loop", dir: join(base, "never-made") })).toEqual([]);
  });
});

const hasDeviceMapper = / device-mapper$/m.test(readFileSync("/proc/misc", "utf8"));
if (isRoot && !hasDeviceMapper) {
  console.warn(
    "scratch.test.ts: this kernel has no device-mapper, so only LVM's failure and sweep paths are tested",
  );
}

describe.skipIf(!isRoot)("LVM scratch volumes (root)", () => {
  const base = uniqueTempPath("kiln-lvm-test");
  const vg = `kilntest${process.pid}${Math.random().toString(36).slice(2, 6)}`;
  const pvFile = join(base, "pv.img");
  let pv = "";
  const cfg: ScratchConfig = { backend: "lvm", dir: join(base, "scratch"), volumeGroup: vg };
  const lvNames = () =>
    shOk(["lvs", "--noheadings", "-o", "lv_name", vg])
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "");

  beforeAll(
    () => {
      if (Bun.which("lvcreate", { PATH: ENV.PATH }) === null) {
        const apt = { ...ENV, DEBIAN_FRONTEND: "noninteractive" };
        for (const cmd of [
          ["apt-get", "update"],
          ["apt-get", "install", "-y", "lvm2"],
        ]) {
          const r = Bun.spawnSync(cmd, { env: apt, stdout: "pipe", stderr: "pipe" });
          if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")} failed: ${r.stderr.toString()}`);
        }
      }
      mkdirSync(base, { mode: 0o700 });
      shOk(["truncate", "--size", String(256 * MiB), pvFile]);
      pv = shOk(["losetup", "--find", "--show", pvFile]).trim();
      shOk(["pvcreate", "-q", pv]);
      shOk(["vgcreate", "-q", vg, pv]);
    },
    { timeout: 300_000 },
  );

  afterAll(() => {
    if (pv !== "") {
      sh(["vgremove", "-q", "-f", vg]);
      sh(["pvremove", "-q", pv]);
      sh(["losetup", "--detach", pv]);
    }
    const loops = loopsUnder(base);
    rmSync(base, { recursive: true, force: true });
    expect(shOk(["vgs", "--noheadings", "-o", "vg_name"])).not.toContain(vg);
    expect(loops).toEqual([]);
  });

  test.skipIf(!hasDeviceMapper)(
    "an LVM volume is an ext4 logical volume of at least the requested size",
    async () => {
      const s = await createScratch(cfg, "slot-0", 64 * MiB);
      if (s.backend !== "lvm") throw new Error("expected an LVM volume");
      expect(s).toMatchObject({ lv: "kiln-slot-0", vg, device: `/dev/${vg}/kiln-slot-0` });
      expect(s.sizeBytes).toBeGreaterThanOrEqual(64 * MiB);
      expect(shOk(["blkid", "-o", "value", "-s", "TYPE", s.device]).trim()).toBe("ext4");
      await destroyScratch(cfg, s);
      expect(lvNames()).toEqual([]);
      await destroyScratch(cfg, s);
    },
  );

  test.skipIf(hasDeviceMapper)(
    "without device-mapper the LVM backend fails plainly and creates nothing",
    async () => {
      await expect(createScratch(cfg, "slot-0", 64 * MiB)).rejects.toMatchObject({
        code: "SCRATCH_NO_DEVICE_MAPPER",
        message: expect.stringContaining("device-mapper driver"),
      });
      expect(lvNames()).toEqual([]);
    },
  );

  test("sweepScratch removes every kiln-* logical volume in the group and nothing else", async () => {
    // Inactive volumes: metadata is all a sweep needs, and it works without device-mapper too.
    const noDriver = hasDeviceMapper ? [] : ["--driverloaded", "n"];
    for (const name of ["kiln-a", "kiln-b", "keep-c"]) {
      shOk(["lvcreate", ...noDriver, "-q", "-y", "-an", "-Zn", "-L", "8m", "-n", name, vg]);
    }
    expect(await sweepScratch(cfg)).toEqual([`${vg}/kiln-a`, `${vg}/kiln-b`]);
    expect(lvNames()).toEqual(["keep-c"]);
    shOk(["lvremove", ...noDriver, "-q", "-y", `${vg}/keep-c`]);
  });

  test("destroyScratch of a logical volume that is already gone is fine", async () => {
    const gone = {
      backend: "lvm",
      vg,
      lv: "kiln-gone",
      device: `/dev/${vg}/kiln-gone`,
      sizeBytes: MiB,
    } as const;
    await destroyScratch(cfg, gone);
    await destroyScratch(cfg, gone);
  });
});

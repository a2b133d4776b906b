import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "../../../test/harness.ts";
import {
  applyLimits,
  attachJobCgroup,
  type CgroupLayout,
  detectCgroups,
  type JobCgroup,
  killAll,
  listPids,
  openJobCgroup,
  parseCgroupMounts,
  readUsage,
  removeCgroup,
  resetCounters,
  sweepCgroups,
} from "./index.ts";

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn("cgroups.test.ts: not running as root, so the tests on real cgroups are skipped");

describe("parseCgroupMounts", () => {
  const hybrid = [
    "22 26 0:21 / /sys rw,relatime - sysfs sysfs rw",
    "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
    "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu",
    "32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct",
    "33 30 0:30 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset",
    "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
    "38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids",
    "39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd",
    "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
  ].join("\n");

  test("a host with v1 controllers and a cgroup2 mount is hybrid; named hierarchies are not controllers", () => {
    expect(parseCgroupMounts(hybrid)).toEqual({
      mode: "hybrid",
      unified: "/sys/fs/cgroup/unified",
      v1: {
        cpu: "/sys/fs/cgroup/cpu",
        cpuacct: "/sys/fs/cgroup/cpuacct",
        cpuset: "/sys/fs/cgroup/cpuset",
        memory: "/sys/fs/cgroup/memory",
        pids: "/sys/fs/cgroup/pids",
      },
    });
  });

  test("a host with only cgroup2 is v2, with optional fields before the separator", () => {
    const text = [
      "25 1 0:23 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
      "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot",
    ].join("\n");
    expect(parseCgroupMounts(text)).toEqual({ mode: "v2", unified: "/sys/fs/cgroup", v1: {} });
  });

  test("a host without cgroup2 is v1, and co-mounted controllers share a mount point", () => {
    const text = [
      "20 19 0:17 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
      "21 19 0:18 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
      "22 19 0:19 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer",
      // A bind mount of a sub-tree of the memory hierarchy does not replace the mount of its root.
      "23 40 0:18 /docker/abc /mnt/mem rw - cgroup cgroup rw,memory",
    ].join("\n");
    expect(parseCgroupMounts(text)).toEqual({
      mode: "v1",
      v1: {
        cpu: "/sys/fs/cgroup/cpu,cpuacct",
        cpuacct: "/sys/fs/cgroup/cpu,cpuacct",
        memory: "/sys/fs/cgroup/memory",
        freezer: "/sys/fs/cgroup/freezer",
      },
    });
  });

  test("escaped mount points are decoded", () => {
    const text = "35 24 0:30 / /mnt/my\\040cgroups rw - cgroup2 none rw";
    expect(parseCgroupMounts(text).unified).toBe("/mnt/my cgroups");
  });

  test("a host without any cgroup filesystem is an error", () => {
    expect(() => parseCgroupMounts("25 1 0:23 / / rw - ext4 /dev/sda1 rw")).toThrow("no cgroup filesystem");
  });
});

// A directory of plain files shaped like a cgroup2 hierarchy: it checks which files get which values on a
// pure v2 host, which this project's hybrid machines cannot show for real.
describe("on a cgroup v2 layout", () => {
  let root = "";
  const file = (...parts: string[]) => join(root, ...parts);
  const read = (...parts: string[]) => readFileSync(file(...parts), "utf8");

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), "kiln-cgv2-"));
    for (const dir of ["", "kiln"]) {
      mkdirSync(file(dir), { recursive: true });
      writeFileSync(file(dir, "cgroup.controllers"), "cpuset cpu io memory pids\n");
      writeFileSync(file(dir, "cgroup.subtree_control"), dir === "" ? "cpu\n" : "");
    }
    const leaf = file("kiln", "slot-0");
    mkdirSync(leaf);
    for (const name of [
      "memory.max",
      "memory.swap.max",
      "memory.oom.group",
      "cpu.max",
      "pids.max",
      "io.weight",
    ]) {
      writeFileSync(join(leaf, name), "");
    }
    writeFileSync(join(leaf, "cgroup.procs"), "");
    writeFileSync(join(leaf, "cpu.stat"), "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n");
    writeFileSync(join(leaf, "memory.events"), "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
    writeFileSync(join(leaf, "pids.events"), "max 3\n");
  });

  afterAll(() => rmSync(root, { recursive: true, force: true }));

  test("opening a cgroup enables the missing controllers in every ancestor, top down", () => {
    const cg = openJobCgroup({ mode: "v2", unified: root, v1: {} }, "kiln/slot-0");
    expect(cg.procsFiles).toEqual([file("kiln", "slot-0", "cgroup.procs")]);
    expect(read("cgroup.subtree_control")).toBe("+memory +pids +io");
    expect(read("kiln", "cgroup.subtree_control")).toBe("+memory +cpu +pids +io");
  });

  test("limits go to memory.max, cpu.max, pids.max and io.weight, and undefined ones are lifted", () => {
    const cg = openJobCgroup({ mode: "v2", unified: root, v1: {} }, "kiln/slot-0");
    applyLimits(cg, { memoryBytes: 512 * MiB, cpus: 1.5, pids: 100, ioWeight: 500 });
    expect(read("kiln", "slot-0", "memory.max")).toBe(String(512 * MiB));
    expect(read("kiln", "slot-0", "memory.swap.max")).toBe("0");
    expect(read("kiln", "slot-0", "memory.oom.group")).toBe("1");
    expect(read("kiln", "slot-0", "cpu.max")).toBe("150000 100000");
    expect(read("kiln", "slot-0", "pids.max")).toBe("100");
    expect(read("kiln", "slot-0", "io.weight")).toBe("default 500");
    applyLimits(cg, {});
    expect(read("kiln", "slot-0", "memory.max")).toBe("max");
    expect(read("kiln", "slot-0", "cpu.max")).toBe("max 100000");
    expect(read("kiln", "slot-0", "pids.max")).toBe("max");
    expect(read("kiln", "slot-0", "io.weight")).toBe("default 100");
  });

  test("usage is reported relative to the counters at resetCounters", () => {
    const cg = openJobCgroup({ mode: "v2", unified: root, v1: {} }, "kiln/slot-0");
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 0, oomKills: 0, pidsLimitHit: 0 });
    writeFileSync(file("kiln", "slot-0", "cpu.stat"), "usage_usec 9000\n");
    writeFileSync(file("kiln", "slot-0", "memory.events"), "oom 3\noom_kill 3\n");
    writeFileSync(file("kiln", "slot-0", "pids.events"), "max 10\n");
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 4, oomKills: 1, pidsLimitHit: 7 });
    resetCounters(cg);
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 0, oomKills: 0, pidsLimitHit: 0 });
  });

  test("a limit the host cannot enforce is an error, and so is a nonsensical one", () => {
    const noIo = mkdtempSync(join(tmpdir(), "kiln-cgv2-noio-"));
    try {
      writeFileSync(join(noIo, "cgroup.controllers"), "memory pids\n");
      writeFileSync(join(noIo, "cgroup.subtree_control"), "");
      mkdirSync(join(noIo, "slot-0"));
      writeFileSync(join(noIo, "slot-0", "memory.max"), "");
      writeFileSync(join(noIo, "slot-0", "pids.max"), "");
      const cg = openJobCgroup({ mode: "v2", unified: noIo, v1: {} }, "slot-0");
      expect(() => applyLimits(cg, { ioWeight: 200, pids: 5 })).toThrow(
        "cannot enforce io weight (ioWeight)",
      );
      expect(() => applyLimits(cg, { cpus: 2 })).toThrow("cannot enforce cpu (cpus)");
      // Nothing was written before the refusal.
      expect(readFileSync(join(noIo, "slot-0", "memory.max"), "utf8")).toBe("max");
      expect(() => applyLimits(cg, { memoryBytes: 1024 * MiB, ioWeight: 10 })).toThrow();
      expect(readFileSync(join(noIo, "slot-0", "memory.max"), "utf8")).toBe("max");
      expect(() => applyLimits(cg, { pids: 0 })).toThrow("invalid pids limit 0");
      expect(() => applyLimits(cg, { memoryBytes: 1.5 })).toThrow("invalid memoryBytes");
    } finally {
      rmSync(noIo, { recursive: true, force: true });
    }
  });

  test("cgroup paths that could escape the hierarchy are refused", () => {
    const layout: CgroupLayout = { mode: "v2", unified: root, v1: {} };
    for (const bad of ["", "/kiln", "kiln/../etc", "kiln//x", "kiln/.hidden", "kiln/a b"]) {
      expect(() => openJobCgroup(layout, bad)).toThrow("invalid cgroup path");
    }
  });
});

describe.skipIf(!isRoot)("real cgroups (root)", () => {
  let layout: CgroupLayout;
  const parent = `kiln-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  let scratch = "";

  beforeAll(() => {
    layout = detectCgroups();
    scratch = mkdtempSync(join(tmpdir(), "kiln-cgtest-"));
  });

  afterAll(async () => {
    rmSync(scratch, { recursive: true, force: true });
    await removeCgroup(attachJobCgroup(layout, parent));
    const mounts = [...new Set([...Object.values(layout.v1), ...(layout.unified ? [layout.unified] : [])])];
    expect(mounts.filter((m) => existsSync(join(m, parent)))).toEqual([]);
  });

  // Runs a shell that first moves itself into every hierarchy of the job cgroup, as the launcher does.
  function startIn(cg: JobCgroup, script: string) {
    const joinAll = cg.procsFiles.map((f) => `echo $$ > ${f} || exit 99`).join("\n");
    return Bun.spawn(["sh", "-c", `${joinAll}\n${script}`], { stdout: "pipe", stderr: "pipe" });
  }

  async function runIn(cg: JobCgroup, script: string) {
    const proc = startIn(cg, script);
    const [stdout, stderr, exitCode] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { exitCode, stdout, stderr };
  }

  test("the host's cgroup mounts are detected and confirmed by statfs", () => {
    expect(["v2", "hybrid", "v1"]).toContain(layout.mode);
    if (layout.unified !== undefined) expect(statfsSync(layout.unified).type).toBe(0x63677270);
    for (const mount of Object.values(layout.v1)) expect(statfsSync(mount).type).toBe(0x27e0eb);
  });

  test("a job cgroup spans every hierarchy Kiln uses, and the cpuset hierarchy is left out", () => {
    const cg = openJobCgroup(layout, `${parent}/span`);
    const hierarchies = cg.dirs.map((d) => d.slice(0, -`/${parent}/span`.length));
    for (const c of ["memory", "cpu", "cpuacct", "pids", "blkio", "devices", "freezer"]) {
      const mount = layout.v1[c];
      if (mount !== undefined) expect(hierarchies).toContain(mount);
    }
    if (layout.unified !== undefined) expect(hierarchies.at(-1)).toBe(layout.unified);
    if (
      layout.v1.cpuset !== undefined &&
      !Object.entries(layout.v1).some(([c, m]) => c !== "cpuset" && m === layout.v1.cpuset)
    ) {
      expect(hierarchies).not.toContain(layout.v1.cpuset);
    }
    for (const file of cg.procsFiles) expect(existsSync(file)).toBe(true);
  });

  test("a job over its memory limit is OOM-killed and the kill and a peak near the limit are reported", async () => {
    const cg = openJobCgroup(layout, `${parent}/oom`);
    applyLimits(cg, { memoryBytes: 64 * MiB });
    // tail keeps the whole newline-free input in memory.
    const result = await runIn(cg, "head -c 300M /dev/zero | tail");
    expect(result.exitCode).toBe(137);
    const usage = readUsage(cg);
    expect(usage.oomKills).toBeGreaterThanOrEqual(1);
    expect(usage.peakMemoryBytes).toBeGreaterThan(56 * MiB);
    expect(usage.peakMemoryBytes).toBeLessThanOrEqual(64 * MiB);
    await removeCgroup(cg);
  });

  test("a pids limit makes forking fail and the failures are counted", async () => {
    const cg = openJobCgroup(layout, `${parent}/pids`);
    applyLimits(cg, { pids: 4 });
    const result = await runIn(cg, "for i in 1 2 3 4 5 6 7 8; do sleep 30 >/dev/null 2>&1 & done; wait");
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toMatch(/fork/i);
    expect(readUsage(cg).pidsLimitHit).toBeGreaterThan(0);
    await removeCgroup(cg);
    expect(listPids(cg)).toEqual([]);
  });

  test("cpu time of a busy loop is counted", async () => {
    const cg = openJobCgroup(layout, `${parent}/cpu`);
    applyLimits(cg, { cpus: 1 });
    expect(readUsage(cg).cpuMs).toBe(0);
    const result = await runIn(cg, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
    expect(result.exitCode).toBe(0);
    expect(readUsage(cg).cpuMs).toBeGreaterThan(20);
    await removeCgroup(cg);
  });

  test("resetCounters makes the next job on a reused cgroup start from zero", async () => {
    const slot = `${parent}/reuse`;
    const first = openJobCgroup(layout, slot);
    applyLimits(first, { memoryBytes: 32 * MiB, pids: 3 });
    await runIn(first, "head -c 100M /dev/zero | tail; for i in 1 2 3 4; do sleep 30 >/dev/null 2>&1 & done");
    await killAll(first);
    const used = readUsage(first);
    expect(used.oomKills).toBeGreaterThanOrEqual(1);
    expect(used.pidsLimitHit).toBeGreaterThan(0);

    resetCounters(first);
    const fresh = readUsage(first);
    expect(fresh.oomKills).toBe(0);
    expect(fresh.pidsLimitHit).toBe(0);
    expect(fresh.cpuMs).toBe(0);
    expect(fresh.peakMemoryBytes).toBeLessThan(8 * MiB);

    // Reopening the slot (a restarted worker) starts from zero too.
    const again = openJobCgroup(layout, slot);
    expect(readUsage(again).oomKills).toBe(0);
    await removeCgroup(again);
  });

  test("applying undefined limits to a reused cgroup lifts the previous job's limits", async () => {
    const cg = openJobCgroup(layout, `${parent}/lift`);
    applyLimits(cg, { memoryBytes: 32 * MiB, cpus: 0.5, pids: 10, ioWeight: 500 });
    expect((await runIn(cg, "head -c 64M /dev/zero | tail")).exitCode).toBe(137);
    applyLimits(cg, {});
    resetCounters(cg);
    expect((await runIn(cg, "head -c 64M /dev/zero | tail")).exitCode).toBe(0);
    expect(readUsage(cg).oomKills).toBe(0);
    const { memory, cpu, pids } = cg.sites;
    if (memory?.api === "v1") {
      expect(Number(readFileSync(join(memory.dir, "memory.limit_in_bytes"), "utf8"))).toBeGreaterThan(
        2 ** 60,
      );
    }
    if (cpu?.api === "v1") expect(readFileSync(join(cpu.dir, "cpu.cfs_quota_us"), "utf8").trim()).toBe("-1");
    if (cpu?.api === "v2") expect(readFileSync(join(cpu.dir, "cpu.max"), "utf8").trim()).toBe("max 100000");
    if (pids) expect(readFileSync(join(pids.dir, "pids.max"), "utf8").trim()).toBe("max");
    await removeCgroup(cg);
  });

  const killScript = [
    "setsid sh -c 'sleep 100 & exec sleep 101' &",
    "(sleep 102 &)",
    "sleep 103 &",
    "exec sleep 104",
  ].join("\n");

  test("killAll empties the cgroup, including setsid and double-forked processes", async () => {
    const cg = openJobCgroup(layout, `${parent}/kill`);
    const proc = startIn(cg, killScript);
    await waitFor("five processes", () => listPids(cg).length === 5);
    const pids = listPids(cg);
    await killAll(cg);
    expect(listPids(cg)).toEqual([]);
    expect(await proc.exited).toBe(137);
    for (const pid of pids) expect(isAlive(pid)).toBe(false);
    await removeCgroup(cg);
  });

  test.skipIf(isRoot && detectCgroups().v1.freezer === undefined)(
    "without cgroup2, killAll freezes the v1 freezer and kills every process",
    async () => {
      const v1Only: CgroupLayout = { mode: "v1", v1: layout.v1 };
      const cg = openJobCgroup(v1Only, `${parent}/kill-v1`);
      expect(cg.sites.unified).toBeUndefined();
      const proc = startIn(cg, killScript);
      await waitFor("five processes", () => listPids(cg).length === 5);
      const pids = listPids(cg);
      await killAll(cg);
      expect(listPids(cg)).toEqual([]);
      expect(await proc.exited).toBe(137);
      for (const pid of pids) expect(isAlive(pid)).toBe(false);
      expect(readFileSync(join(cg.sites.freezer!.dir, "freezer.state"), "utf8").trim()).toBe("THAWED");
      await removeCgroup(cg);
    },
  );

  test.skipIf(isRoot && detectCgroups().v1.devices === undefined)(
    "on v1 a job can use /dev/null but not a block device, unless that device is allowed",
    async () => {
      const node = join(scratch, "blk");
      // loop0's numbers (block 7:0): opening it is harmless, and the devices cgroup checks before the driver.
      expect(Bun.spawnSync(["mknod", node, "b", "7", "0"]).exitCode).toBe(0);
      const cg = openJobCgroup(layout, `${parent}/devices`);
      applyLimits(cg, {});
      const control = Bun.spawnSync(["head", "-c1", node]);
      expect(control.exitCode).toBe(0);
      const denied = await runIn(cg, `head -c1 ${node}`);
      expect(denied.exitCode).not.toBe(0);
      expect(denied.stderr).toContain("Operation not permitted");
      const allowed = await runIn(cg, "echo ok > /dev/null && head -c1 /dev/zero | od -An -tx1");
      expect(allowed).toEqual({ exitCode: 0, stdout: " 00\n", stderr: "" });

      applyLimits(cg, { devices: [node] });
      expect((await runIn(cg, `head -c1 ${node}`)).exitCode).toBe(0);
      expect(() => applyLimits(cg, { devices: [scratch] })).toThrow("not a device node");
      await removeCgroup(cg);
    },
  );

  test("sweepCgroups kills and removes every leftover under its parent and returns them", async () => {
    const base = `${parent}/sweep`;
    const a = openJobCgroup(layout, `${base}/slot-a`);
    openJobCgroup(layout, `${base}/slot-b`);
    const proc = startIn(a, "exec sleep 100");
    await waitFor("the leftover process", () => listPids(a).length === 1);
    expect(await sweepCgroups(layout, base)).toEqual([`${base}/slot-a`, `${base}/slot-b`]);
    expect(await proc.exited).toBe(137);
    for (const dir of a.dirs) expect(existsSync(dir)).toBe(false);
    expect(await sweepCgroups(layout, base)).toEqual([]);
  });

  test("removeCgroup is idempotent, and attachJobCgroup creates nothing", async () => {
    const cg = openJobCgroup(layout, `${parent}/twice`);
    await removeCgroup(cg);
    await removeCgroup(cg);
    for (const dir of cg.dirs) expect(existsSync(dir)).toBe(false);
    const absent = attachJobCgroup(layout, `${parent}/never`);
    expect(absent.procsFiles).toHaveLength(cg.procsFiles.length);
    expect(listPids(absent)).toEqual([]);
    await removeCgroup(absent);
    for (const dir of absent.dirs) expect(existsSync(dir)).toBe(false);
  });
});

function isAlive(pid: number): boolean {
  // A zombie still answers kill(pid, 0), so look at its state instead.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2)[0];
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

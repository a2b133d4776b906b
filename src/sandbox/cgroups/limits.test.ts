import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  applyLimits,
  attachJobCgroup,
  type CgroupLayout,
  detectCgroups,
  openJobCgroup,
  readUsage,
  removeCgroup,
  resetCounters,
  setDeviceRules,
} from "./index.ts";
import { fakeV2Hierarchy, isRoot, leftIn, MiB, runIn, testParent } from "./test-support.ts";

if (!isRoot) console.warn("limits.test.ts: not running as root, so the tests on real cgroups are skipped");

describe("on a cgroup v2 layout", () => {
  test("limits go to memory.max, cpu.max, pids.max and io.weight, and undefined ones are lifted", () => {
    using fake = fakeV2Hierarchy();
    const read = (name: string) => fake.read("kiln", "slot-0", name);
    const cg = openJobCgroup(fake.layout, "kiln/slot-0");
    applyLimits(cg, { memoryBytes: 512 * MiB, cpus: 1.5, pids: 100, ioWeight: 500 });
    expect(read("memory.max")).toBe(String(512 * MiB));
    expect(read("memory.swap.max")).toBe("0");
    expect(read("memory.oom.group")).toBe("1");
    expect(read("cpu.max")).toBe("150000 100000");
    expect(read("pids.max")).toBe("100");
    expect(read("io.weight")).toBe("default 500");
    applyLimits(cg, {});
    expect(read("memory.max")).toBe("max");
    expect(read("cpu.max")).toBe("max 100000");
    expect(read("pids.max")).toBe("max");
    expect(read("io.weight")).toBe("default 100");
  });

  test("the limits the cgroup already holds are not written again; other limits are written in full", () => {
    using fake = fakeV2Hierarchy();
    const read = (name: string) => fake.read("kiln", "slot-0", name);
    const cg = openJobCgroup(fake.layout, "kiln/slot-0");
    applyLimits(cg, { memoryBytes: 512 * MiB, pids: 100 });
    // Marks that only a new write would replace: the files of a real cgroup only the worker writes.
    writeFileSync(fake.file("kiln", "slot-0", "pids.max"), "untouched");
    applyLimits(cg, { memoryBytes: 512 * MiB, pids: 100 });
    expect(read("pids.max")).toBe("untouched");
    applyLimits(cg, { memoryBytes: 512 * MiB, pids: 101 });
    expect(read("pids.max")).toBe("101");
    expect(read("memory.max")).toBe(String(512 * MiB));
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
});

describe.skipIf(!isRoot)("real cgroups (root)", () => {
  let layout: CgroupLayout;
  const parent = testParent();
  let scratch = "";

  beforeAll(() => {
    layout = detectCgroups();
    scratch = mkdtempSync(join(tmpdir(), "kiln-cgtest-"));
  });

  afterAll(async () => {
    rmSync(scratch, { recursive: true, force: true });
    await removeCgroup(attachJobCgroup(layout, parent));
    expect(leftIn(layout, parent)).toEqual([]);
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

      // The launcher's window: a rule added and withdrawn leaves the set applyLimits wrote; one left
      // behind (a launch that failed early) is undone by the next applyLimits, even with equal limits.
      setDeviceRules(cg, ["b 7:* rwm"], true);
      expect((await runIn(cg, `head -c1 ${node}`)).exitCode).toBe(0);
      applyLimits(cg, {});
      expect((await runIn(cg, `head -c1 ${node}`)).exitCode).not.toBe(0);
      setDeviceRules(cg, ["b 7:* rwm"], true);
      setDeviceRules(cg, ["b 7:* rwm"], false);
      applyLimits(cg, {});
      expect((await runIn(cg, `head -c1 ${node}`)).exitCode).not.toBe(0);

      applyLimits(cg, { devices: [node] });
      expect((await runIn(cg, `head -c1 ${node}`)).exitCode).toBe(0);
      expect(() => applyLimits(cg, { devices: [scratch] })).toThrow("not a device node");
      await removeCgroup(cg);
    },
  );
});

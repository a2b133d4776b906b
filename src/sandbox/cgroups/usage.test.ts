import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import {
  applyLimits,
  attachJobCgroup,
  type CgroupLayout,
  detectCgroups,
  killAll,
  listPids,
  openJobCgroup,
  readUsage,
  removeCgroup,
  resetCounters,
} from "./index.ts";
import { fakeV2Hierarchy, isRoot, leftIn, MiB, runIn, testParent } from "./test-support.ts";

if (!isRoot) console.warn("usage.test.ts: not running as root, so the tests on real cgroups are skipped");

describe("on a cgroup v2 layout", () => {
  test("usage is reported relative to the counters at resetCounters", () => {
    using fake = fakeV2Hierarchy();
    const cg = openJobCgroup(fake.layout, "kiln/slot-0");
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 0, oomKills: 0, pidsLimitHit: 0 });
    writeFileSync(fake.file("kiln", "slot-0", "cpu.stat"), "usage_usec 9000\n");
    writeFileSync(fake.file("kiln", "slot-0", "memory.events"), "oom 3\noom_kill 3\n");
    writeFileSync(fake.file("kiln", "slot-0", "pids.events"), "max 10\n");
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 4, oomKills: 1, pidsLimitHit: 7 });
    resetCounters(cg);
    expect(readUsage(cg)).toEqual({ peakMemoryBytes: 0, cpuMs: 0, oomKills: 0, pidsLimitHit: 0 });
  });
});

describe.skipIf(!isRoot)("real cgroups (root)", () => {
  let layout: CgroupLayout;
  const parent = testParent();

  beforeAll(() => {
    layout = detectCgroups();
  });

  afterAll(async () => {
    await removeCgroup(attachJobCgroup(layout, parent));
    expect(leftIn(layout, parent)).toEqual([]);
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
});

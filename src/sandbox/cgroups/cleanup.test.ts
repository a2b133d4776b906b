import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { waitFor } from "../../../test/harness.ts";
import {
  attachJobCgroup,
  type CgroupLayout,
  detectCgroups,
  isEmpty,
  killAll,
  listPids,
  openJobCgroup,
  removeCgroup,
  sweepCgroups,
} from "./index.ts";
import { isAlive, isRoot, leftIn, startIn, testParent } from "./test-support.ts";

if (!isRoot) console.warn("cleanup.test.ts: not running as root, so the tests on real cgroups are skipped");

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

  test("isEmpty says whether any process is left in the job's cgroups, with and without cgroup2", async () => {
    const cg = openJobCgroup(layout, `${parent}/empty`);
    const v1Only =
      layout.v1.pids === undefined
        ? null
        : openJobCgroup({ mode: "v1", v1: layout.v1 }, `${parent}/empty-v1`);
    expect(isEmpty(cg)).toBe(true);
    const proc = startIn(cg, "exec sleep 100");
    await waitFor("the process", () => listPids(cg).length === 1);
    expect(isEmpty(cg)).toBe(false);
    if (v1Only) {
      expect(isEmpty(v1Only)).toBe(true);
      const other = startIn(v1Only, "exec sleep 100");
      await waitFor("the v1 process", () => listPids(v1Only).length === 1);
      expect(isEmpty(v1Only)).toBe(false);
      await killAll(v1Only);
      await other.exited;
      expect(isEmpty(v1Only)).toBe(true);
      await removeCgroup(v1Only);
    }
    await killAll(cg);
    await proc.exited;
    // cgroup2 updates `populated` as the last process leaves, which killAll has waited for.
    await waitFor("populated to drop", () => isEmpty(cg));
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

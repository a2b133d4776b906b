import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { attachJobCgroup, type CgroupLayout, detectCgroups, openJobCgroup, removeCgroup } from "./index.ts";
import { fakeV2Hierarchy, isRoot, leftIn, testParent } from "./test-support.ts";

if (!isRoot) console.warn("create.test.ts: not running as root, so the tests on real cgroups are skipped");

describe("on a cgroup v2 layout", () => {
  test("opening a cgroup enables the missing controllers in every ancestor, top down", () => {
    using fake = fakeV2Hierarchy();
    const cg = openJobCgroup(fake.layout, "kiln/slot-0");
    expect(cg.procsFiles).toEqual([fake.file("kiln", "slot-0", "cgroup.procs")]);
    expect(fake.read("cgroup.subtree_control")).toBe("+memory +pids +io");
    expect(fake.read("kiln", "cgroup.subtree_control")).toBe("+memory +cpu +pids +io");
  });

  test("cgroup paths that could escape the hierarchy are refused", () => {
    using fake = fakeV2Hierarchy();
    for (const bad of ["", "/kiln", "kiln/../etc", "kiln//x", "kiln/.hidden", "kiln/a b"]) {
      expect(() => openJobCgroup(fake.layout, bad)).toThrow("invalid cgroup path");
      expect(() => attachJobCgroup(fake.layout, bad)).toThrow("invalid cgroup path");
    }
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
});

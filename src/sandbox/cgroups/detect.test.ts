import { describe, expect, test } from "bun:test";
import { statfsSync } from "node:fs";
import { detectCgroups, parseCgroupMounts } from "./index.ts";
import { isRoot } from "./test-support.ts";

if (!isRoot)
  console.warn("detect.test.ts: not running as root, so the test on this host's cgroups is skipped");

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

describe.skipIf(!isRoot)("this host (root)", () => {
  test("the host's cgroup mounts are detected and confirmed by statfs", () => {
    const layout = detectCgroups();
    expect(["v2", "hybrid", "v1"]).toContain(layout.mode);
    if (layout.unified !== undefined) expect(statfsSync(layout.unified).type).toBe(0x63677270);
    for (const mount of Object.values(layout.v1)) expect(statfsSync(mount).type).toBe(0x27e0eb);
  });
});

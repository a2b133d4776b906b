// Detecting the host's cgroup layout: which v1 controller hierarchies and which cgroup2 hierarchy are
// mounted, and so whether the host is pure v2, hybrid or pure v1 (cgroups(7)).

import { readFileSync, statfsSync } from "node:fs";
import { AppError } from "../../lib/errors.ts";

/** The host's shape: only cgroup2, v1 controllers beside a cgroup2 mount, or only v1 (cgroups(7)). */
export type CgroupMode = "v2" | "hybrid" | "v1";

/** Where the cgroup filesystems are mounted on this host. */
export interface CgroupLayout {
  mode: CgroupMode;
  /** Mount point of the cgroup2 hierarchy, when one is mounted. */
  unified?: string;
  /** v1 controller name to the mount point of its hierarchy; co-mounted controllers share one. */
  v1: Record<string, string>;
}

const CGROUP_SUPER_MAGIC = 0x27e0eb;
const CGROUP2_SUPER_MAGIC = 0x63677270;

// Controllers cgroup v1 can mount; anything else in a cgroup mount's options (rw, name=systemd,
// clone_children, ...) is a mount option, not a controller.
const V1_CONTROLLERS = new Set([
  "cpu",
  "cpuacct",
  "cpuset",
  "memory",
  "devices",
  "freezer",
  "net_cls",
  "net_prio",
  "blkio",
  "perf_event",
  "hugetlb",
  "pids",
  "rdma",
  "misc",
]);

/**
 * Reads the cgroup mounts out of /proc/self/mountinfo text (proc(5)) and classifies the host. Pure, so
 * it can be tested on sample text; throws when no cgroup filesystem is mounted at all.
 */
export function parseCgroupMounts(mountinfo: string): CgroupLayout {
  let unified: string | undefined;
  const v1: Record<string, string> = {};
  // A hierarchy may be mounted several times (bind mounts); prefer a mount of its root.
  const v1Root: Record<string, boolean> = {};
  for (const line of mountinfo.split("\n")) {
    const fields = line.trim().split(" ");
    const dash = fields.indexOf("-", 6);
    if (dash < 0) continue;
    const root = fields[3];
    const mountPoint = unescapeMountField(fields[4] ?? "");
    const fsType = fields[dash + 1];
    const superOptions = (fields[dash + 3] ?? "").split(",");
    if (fsType === "cgroup2") {
      if (unified === undefined || root === "/") unified ??= mountPoint;
    } else if (fsType === "cgroup") {
      for (const option of superOptions) {
        if (!V1_CONTROLLERS.has(option)) continue;
        if (v1[option] === undefined || (!v1Root[option] && root === "/")) {
          v1[option] = mountPoint;
          v1Root[option] = root === "/";
        }
      }
    }
  }
  const hasV1 = Object.keys(v1).length > 0;
  if (!hasV1 && unified === undefined)
    throw new AppError("CGROUP_NONE", "no cgroup filesystem is mounted (see cgroups(7))", { status: 500 });
  const mode: CgroupMode = !hasV1 ? "v2" : unified === undefined ? "v1" : "hybrid";
  return unified === undefined ? { mode, v1 } : { mode, unified, v1 };
}

// mountinfo escapes space, tab, newline and backslash as octal (\040 and so on).
function unescapeMountField(text: string): string {
  return text.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
}

/**
 * Detects this host's cgroup layout from /proc/self/mountinfo and confirms every mount point with its
 * statfs magic, dropping any that are shadowed by another filesystem.
 */
export function detectCgroups(): CgroupLayout {
  const parsed = parseCgroupMounts(readFileSync("/proc/self/mountinfo", "utf8"));
  const isType = (path: string, magic: number) => {
    try {
      return statfsSync(path).type === magic;
    } catch {
      return false;
    }
  };
  const v1: Record<string, string> = {};
  for (const [controller, mountPoint] of Object.entries(parsed.v1)) {
    if (isType(mountPoint, CGROUP_SUPER_MAGIC)) v1[controller] = mountPoint;
  }
  const unified =
    parsed.unified !== undefined && isType(parsed.unified, CGROUP2_SUPER_MAGIC) ? parsed.unified : undefined;
  const hasV1 = Object.keys(v1).length > 0;
  if (!hasV1 && unified === undefined)
    throw new AppError("CGROUP_NONE", "no usable cgroup filesystem is mounted", { status: 500 });
  const mode: CgroupMode = !hasV1 ? "v2" : unified === undefined ? "v1" : "hybrid";
  return unified === undefined ? { mode, v1 } : { mode, unified, v1 };
}

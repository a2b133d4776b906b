// Where a job's cgroup lives: for each resource, the hierarchy (v1 or cgroup2) that controls it on this
// host, and the directories and cgroup.procs files the launcher joins. Nothing here touches the filesystem
// beyond reading which controllers cgroup2 offers.

import { join } from "node:path";
import { AppError } from "../../lib/errors.ts";
import type { CgroupLayout } from "./detect.ts";
import { readWords } from "./files.ts";
import type { Limits } from "./limits.ts";
import type { UsageBaseline } from "./usage.ts";

/** One resource's control files: the job's directory in the hierarchy that controls it, and its API. */
export interface CgroupSite {
  api: "v1" | "v2";
  dir: string;
}

/** Where each resource of a job is controlled; a resource this host cannot control is absent. */
export interface CgroupSites {
  memory?: CgroupSite;
  cpu?: CgroupSite;
  cpuacct?: CgroupSite;
  pids?: CgroupSite;
  io?: CgroupSite;
  devices?: CgroupSite;
  freezer?: CgroupSite;
  /** The job's cgroup2 directory, used for tracking and cgroup.kill even when it controls nothing. */
  unified?: string;
}

/** A job's cgroup across every hierarchy; a plain object, safe to keep for the life of a slot. */
export interface JobCgroup {
  readonly layout: CgroupLayout;
  readonly relPath: string;
  /** Every cgroup.procs file the launcher must write its pid to, one per hierarchy. */
  readonly procsFiles: string[];
  /** The job's directory in each hierarchy (the directories of procsFiles). */
  readonly dirs: string[];
  readonly sites: CgroupSites;
  /** Counters at the last resetCounters; readUsage reports the difference. */
  baseline: UsageBaseline;
  /** memory.peak opened and reset through this descriptor (cgroup v2, Linux >= 6.12), else null. */
  peakFd: number | null;
  /** The limits last applied, so a recreated cgroup can get them back. */
  lastLimits: Limits | null;
  /**
   * What the cgroup's limit files hold now, as applyLimits last wrote them (a key of the limits); null
   * when unknown or changed since (the cgroup recreated).
   */
  applied: string | null;
  /** Device rules added by setDeviceRules and not withdrawn yet (the next applyLimits writes in full). */
  extraRules: boolean;
}

const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9_.@:+-]*$/;

function checkRelPath(relPath: string): string[] {
  const segments = relPath.split("/");
  if (segments.length === 0 || !segments.every((s) => SEGMENT.test(s))) {
    const hint = 'expected names like "kiln/w1/slot-0"';
    throw new AppError("CGROUP_INVALID_PATH", `invalid cgroup path ${JSON.stringify(relPath)}: ${hint}`);
  }
  return segments;
}

/**
 * Resolves where each resource is controlled. cpuset is deliberately left out: a new v1 cpuset cgroup
 * starts with empty cpuset.cpus and cpuset.mems and refuses every process until both are copied from the
 * parent, and Kiln limits CPU by quota rather than by pinning, so jobs stay in the worker's cpuset.
 */
function resolveSites(layout: CgroupLayout, relPath: string): CgroupSites {
  const v2Offered = new Set(
    layout.unified === undefined ? [] : readWords(join(layout.unified, "cgroup.controllers")),
  );
  const unifiedDir = layout.unified === undefined ? undefined : join(layout.unified, relPath);
  const pick = (v1Name: string, v2Name: string | null): CgroupSite | undefined => {
    const mount = layout.v1[v1Name];
    if (mount !== undefined) return { api: "v1", dir: join(mount, relPath) };
    // cpu.stat and cgroup.freeze are core cgroup2 files, present without any controller (v2Name null).
    if (unifiedDir !== undefined && (v2Name === null || v2Offered.has(v2Name))) {
      return { api: "v2", dir: unifiedDir };
    }
    return undefined;
  };
  return {
    memory: pick("memory", "memory"),
    cpu: pick("cpu", "cpu"),
    cpuacct: pick("cpuacct", null),
    pids: pick("pids", "pids"),
    io: pick("blkio", "io"),
    // The v2 device controller is a BPF program, not files; see applyDevices.
    devices:
      layout.v1.devices === undefined ? undefined : { api: "v1", dir: join(layout.v1.devices, relPath) },
    freezer: pick("freezer", null),
    unified: unifiedDir,
  };
}

/**
 * Returns the JobCgroup for relPath without creating or changing anything, to remove or inspect a cgroup
 * (a retired slot, or a parent of slots) that may or may not exist.
 */
export function attachJobCgroup(layout: CgroupLayout, relPath: string): JobCgroup {
  checkRelPath(relPath);
  const sites = resolveSites(layout, relPath);
  const { unified, ...controlled } = sites;
  const dirs = new Set<string>();
  for (const site of Object.values(controlled)) if (site?.api === "v1") dirs.add(site.dir);
  // The cgroup2 directory goes last: joining it is what makes cgroup.kill see the process.
  if (unified !== undefined) dirs.add(unified);
  const dirList = [...dirs];
  return {
    layout,
    relPath,
    procsFiles: dirList.map((d) => join(d, "cgroup.procs")),
    dirs: dirList,
    sites,
    baseline: { cpuUsec: 0, oomKills: 0, pidsLimitHit: 0 },
    peakFd: null,
    lastLimits: null,
    applied: null,
    extraRules: false,
  };
}

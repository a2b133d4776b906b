// A job's cgroups: create (or reuse) one per slot in every hierarchy Kiln uses, set limits, read usage,
// kill everything inside and remove. The native launcher joins the cgroups itself by writing its pid to
// each of `procsFiles` before it unshares, so everything a job ever runs starts inside them.
//
// Hosts come in three shapes (cgroups(7)): pure v2 (one cgroup2 hierarchy, usually at /sys/fs/cgroup),
// hybrid (v1 controller hierarchies plus a controller-less cgroup2 at /sys/fs/cgroup/unified) and pure v1.
// Rather than branching on the mode everywhere, each resource is resolved to a "site": the v1 hierarchy
// that holds its controller or, failing that, the cgroup2 hierarchy when its root offers the controller.
// Every interface file is feature-tested before use, because which files exist depends on the kernel's
// version and configuration (swap accounting, BFQ, memory.peak, cgroup.kill).
//
// This file is past the 400-line mark on purpose: it is one concept (a job cgroup's lifecycle) and the
// v1/v2 differences are easier to check side by side than across files.

import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmdirSync,
  statfsSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { AppError, coerceError } from "../../lib/errors.ts";

export type CgroupMode = "v2" | "hybrid" | "v1";

/** Where the cgroup filesystems are mounted on this host. */
export interface CgroupLayout {
  mode: CgroupMode;
  /** Mount point of the cgroup2 hierarchy, when one is mounted. */
  unified?: string;
  /** v1 controller name to the mount point of its hierarchy; co-mounted controllers share one. */
  v1: Record<string, string>;
}

/** Limits for one job; an undefined limit means "unlimited", never "keep the previous job's value". */
export interface Limits {
  memoryBytes?: number;
  /** Fractional cores, e.g. 1.5. */
  cpus?: number;
  pids?: number;
  /** Proportional I/O weight on the cgroup v2 scale, 1..10000 (100 is the default). */
  ioWeight?: number;
  /** Device nodes the job may use beyond the base set (null, zero, full, random, urandom, tty, ptmx, pts). */
  devices?: string[];
}

/** What a job consumed since the last resetCounters. */
export interface Usage {
  /** Peak memory charged to the job, including page cache and tmpfs; 0 when the kernel cannot tell. */
  peakMemoryBytes: number;
  cpuMs: number;
  oomKills: number;
  /** How many times a fork or clone failed because the pids limit was reached. */
  pidsLimitHit: number;
}

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

/** Monotonic counters as read at resetCounters. */
export interface UsageBaseline {
  cpuUsec: number;
  oomKills: number;
  pidsLimitHit: number;
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

// Kernel default CFS period: the window in which a quota is enforced. Shorter periods smooth throttling
// but cost scheduler overhead, and 100 ms is what every container runtime uses.
const CPU_PERIOD_US = 100_000;
// The kernel rejects quotas below 1 ms (sched/core.c, min_cfs_quota_period).
const CPU_MIN_QUOTA_US = 1_000;

// Killed tasks took up to 7 ms here to leave all eight hierarchies of a hybrid host.
const STRAY_GRACE_MS = 100;

// The base device set every job gets on v1 (runc grants the same). "m" is included because the launcher
// may mknod these inside the job's /dev after joining the devices cgroup.
const BASE_DEVICES = ["c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:2", "c 136:*"];

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
  };
}

/**
 * Creates the job's cgroup in every hierarchy Kiln uses, or reuses it if it exists, and returns it with
 * no limits but the base device set, and counters reset. On cgroup2 it enables memory, cpu, pids and io in each ancestor's subtree_control.
 * Hazard: cgroup v2's "no internal processes" rule makes that fail (EBUSY) if an ancestor below the root
 * holds processes, so the parent of Kiln's cgroups must be a dedicated, process-free cgroup (under systemd:
 * move the worker into a "supervisor" child of its delegated unit first).
 */
export function openJobCgroup(layout: CgroupLayout, relPath: string): JobCgroup {
  const cg = attachJobCgroup(layout, relPath);
  for (const dir of cg.dirs) mkdirSync(dir, { recursive: true });
  if (layout.unified !== undefined) enableV2Controllers(cg, layout.unified);
  // A worker that crashed mid-kill can leave the freezer frozen; a frozen slot would hang the next job.
  thaw(cg);
  // A clean slate even if the caller never applies limits: nothing left from the previous job, and on v1
  // the base device policy rather than the parent's allow-all.
  applyLimits(cg, {});
  resetCounters(cg);
  return cg;
}

function enableV2Controllers(cg: JobCgroup, unifiedRoot: string): void {
  const wanted = new Set<string>();
  if (cg.sites.memory?.api === "v2") wanted.add("memory");
  if (cg.sites.cpu?.api === "v2") wanted.add("cpu");
  if (cg.sites.pids?.api === "v2") wanted.add("pids");
  if (cg.sites.io?.api === "v2") wanted.add("io");
  if (wanted.size === 0) return;
  const segments = cg.relPath.split("/");
  // Top-down: a cgroup can only delegate controllers its parent delegated to it.
  for (let depth = 0; depth < segments.length; depth++) {
    const dir = join(unifiedRoot, ...segments.slice(0, depth));
    const offered = new Set(readWords(join(dir, "cgroup.controllers")));
    const enabled = new Set(readWords(join(dir, "cgroup.subtree_control")));
    const missing = [...wanted].filter((c) => offered.has(c) && !enabled.has(c));
    if (missing.length === 0) continue;
    try {
      writeFile(join(dir, "cgroup.subtree_control"), missing.map((c) => `+${c}`).join(" "));
    } catch (error) {
      throw new AppError(
        "CGROUP_SUBTREE_BUSY",
        `cannot enable ${missing.join(", ")} in ${dir}/cgroup.subtree_control; if it is EBUSY, that cgroup ` +
          `holds processes, which cgroup v2 forbids for a cgroup that delegates controllers`,
        { status: 500, cause: error },
      );
    }
  }
}

/**
 * Applies the job's limits, overwriting every limit Kiln manages so nothing from a previous job on the
 * same slot survives. Throws when a requested limit cannot be enforced on this host.
 */
export function applyLimits(cg: JobCgroup, limits: Limits): void {
  // Everything is checked before anything is written, so a refused job never leaves a half-applied set.
  checkLimits(cg, limits);
  applyMemory(cg, limits.memoryBytes);
  applyCpu(cg, limits.cpus);
  applyPids(cg, limits.pids);
  applyIo(cg, limits.ioWeight);
  applyDevices(cg, limits.devices ?? []);
  cg.lastLimits = { ...limits };
}

function checkLimits(cg: JobCgroup, limits: Limits): void {
  const positiveInt = (name: string, value: number | undefined, max = Number.MAX_SAFE_INTEGER) => {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1 && value <= max)) {
      const hint = `expected a whole number from 1 to ${max}`;
      throw new AppError("CGROUP_INVALID_LIMIT", `invalid ${name} limit ${value}: ${hint}`);
    }
  };
  positiveInt("memoryBytes", limits.memoryBytes);
  positiveInt("pids", limits.pids);
  positiveInt("ioWeight", limits.ioWeight, 10_000);
  if (limits.cpus !== undefined && !(Number.isFinite(limits.cpus) && limits.cpus > 0)) {
    const hint = "expected a positive number of cores";
    throw new AppError("CGROUP_INVALID_LIMIT", `invalid cpus limit ${limits.cpus}: ${hint}`);
  }
  const { memory, cpu, pids } = cg.sites;
  const missing = [
    limits.memoryBytes !== undefined && memory === undefined ? "memory (memoryBytes)" : null,
    limits.cpus !== undefined && cpu === undefined ? "cpu (cpus)" : null,
    limits.pids !== undefined && pids === undefined ? "pids (pids)" : null,
    limits.ioWeight !== undefined && ioWeightFiles(cg).length === 0 ? "io weight (ioWeight)" : null,
  ].filter((m) => m !== null);
  if (missing.length > 0) {
    const message = `this host's cgroups cannot enforce ${missing.join(", ")}; no controller for it is available`;
    throw new AppError("CGROUP_LIMIT_UNSUPPORTED", message);
  }
  limits.devices?.forEach(deviceRule);
}

function ioWeightFiles(cg: JobCgroup): string[] {
  const site = cg.sites.io;
  if (site === undefined) return [];
  const files = site.api === "v2" ? ["io.weight", "io.bfq.weight"] : ["blkio.weight", "blkio.bfq.weight"];
  return files.filter((f) => existsSync(join(site.dir, f)));
}

function applyMemory(cg: JobCgroup, bytes: number | undefined): void {
  const site = cg.sites.memory;
  if (site === undefined) return;
  if (site.api === "v2") {
    writeControl(site.dir, "memory.max", bytes ?? "max");
    // Jobs never swap: swapping hides an undersized limit behind slowness instead of a clear OOM.
    writeOptional(site.dir, "memory.swap.max", 0);
    // One OOM kill takes the whole job down rather than leaving a half-dead build that may still exit 0.
    writeOptional(site.dir, "memory.oom.group", 1);
    return;
  }
  // v1 requires limit_in_bytes <= memsw.limit_in_bytes at every step, so lift memsw first and then pin it
  // to the memory limit (no swap, as on v2). memsw only exists with swap accounting enabled.
  const memsw = existsSync(join(site.dir, "memory.memsw.limit_in_bytes"));
  if (memsw) writeControl(site.dir, "memory.memsw.limit_in_bytes", -1);
  writeControl(site.dir, "memory.limit_in_bytes", bytes ?? -1);
  if (memsw && bytes !== undefined) writeControl(site.dir, "memory.memsw.limit_in_bytes", bytes);
  // With the OOM killer disabled a job at its limit would hang instead of failing. Only write when needed:
  // the first write logs a deprecation warning to the kernel log.
  if (readKeyed(join(site.dir, "memory.oom_control"), "oom_kill_disable") === 1) {
    writeControl(site.dir, "memory.oom_control", 0);
  }
}

function applyCpu(cg: JobCgroup, cpus: number | undefined): void {
  const site = cg.sites.cpu;
  if (site === undefined) return;
  const quota = cpus === undefined ? undefined : Math.max(CPU_MIN_QUOTA_US, Math.round(cpus * CPU_PERIOD_US));
  if (site.api === "v2") {
    writeControl(site.dir, "cpu.max", `${quota ?? "max"} ${CPU_PERIOD_US}`);
    return;
  }
  // Lift the quota before changing the period so no intermediate quota/period pair is rejected.
  writeControl(site.dir, "cpu.cfs_quota_us", -1);
  writeControl(site.dir, "cpu.cfs_period_us", CPU_PERIOD_US);
  if (quota !== undefined) writeControl(site.dir, "cpu.cfs_quota_us", quota);
}

function applyPids(cg: JobCgroup, pids: number | undefined): void {
  const site = cg.sites.pids;
  if (site === undefined) return;
  writeControl(site.dir, "pids.max", pids ?? "max");
}

function applyIo(cg: JobCgroup, weight: number | undefined): void {
  const dir = cg.sites.io?.dir;
  if (dir === undefined) return;
  const w = weight ?? 100;
  // BFQ and v1 weights range 1..1000 with the same default of 100 as io.weight, so weights up to 1000
  // keep their meaning and larger ones saturate. (v1 CFQ's blkio.weight starts at 10.)
  const narrow = Math.min(w, 1000);
  for (const file of ioWeightFiles(cg)) {
    if (file === "io.weight") writeControl(dir, file, `default ${w}`);
    else if (file === "blkio.weight") writeControl(dir, file, Math.max(10, narrow));
    else writeControl(dir, file, narrow);
  }
}

/**
 * v1 only: deny everything, then allow the base set and the extra nodes. On cgroup2 device access is a
 * BPF program attached by whoever owns the cgroup; Kiln relies there on the launcher's minimal /dev and
 * the job having no CAP_MKNOD, which give the same guarantee for a job that cannot mount.
 */
function applyDevices(cg: JobCgroup, extra: string[]): void {
  const site = cg.sites.devices;
  if (site === undefined) return;
  if (subdirs(site.dir).length > 0) {
    // The kernel refuses to change a v1 devices cgroup's default while it has children (EINVAL).
    const message = `device rules can only be set on a job cgroup without children: ${site.dir}`;
    throw new AppError("CGROUP_NOT_A_LEAF", message, { status: 500 });
  }
  // "a" resets the exception list and flips the default to deny.
  writeControl(site.dir, "devices.deny", "a");
  for (const rule of [...BASE_DEVICES, ...extra.map(deviceRule)]) {
    writeControl(site.dir, "devices.allow", `${rule} rwm`);
  }
}

/**
 * Adds (allow) or withdraws (deny) v1 device rules like "b 7:* rwm" on a job cgroup; a no-op where the
 * devices controller is not mounted. The launcher uses this window to attach the scratch loop device
 * from inside the job's cgroup; the rules are withdrawn once the job's program runs.
 */
export function setDeviceRules(cg: JobCgroup, rules: string[], allow: boolean): void {
  const site = cg.sites.devices;
  if (site === undefined || site.api !== "v1") return;
  for (const rule of rules) writeControl(site.dir, allow ? "devices.allow" : "devices.deny", rule);
}

function deviceRule(path: string): string {
  const st = statSync(path, { bigint: true });
  const kind = st.isCharacterDevice() ? "c" : st.isBlockDevice() ? "b" : null;
  if (kind === null) {
    throw new AppError(
      "CGROUP_INVALID_DEVICE",
      `${path} is not a device node; cannot allow it in the job's cgroup`,
    );
  }
  // glibc's dev_t encoding (sys/sysmacros.h): 12-bit major and 20-bit minor split across the word.
  const major = ((st.rdev >> 8n) & 0xfffn) | ((st.rdev >> 32n) & ~0xfffn);
  const minor = (st.rdev & 0xffn) | ((st.rdev >> 12n) & ~0xffn);
  return `${kind} ${major}:${minor}`;
}

/**
 * Starts the job's accounting afresh: peaks are reset where the kernel allows it and the current values
 * of monotonic counters become the baseline readUsage subtracts. Call it before every job on a slot.
 */
export function resetCounters(cg: JobCgroup): void {
  const memory = cg.sites.memory;
  if (memory?.api === "v1") {
    // Writing 0 sets the recorded maximum to the current usage (cgroup-v1/memory.rst, section 5.1).
    writeOptional(memory.dir, "memory.max_usage_in_bytes", 0);
    writeOptional(memory.dir, "memory.memsw.max_usage_in_bytes", 0);
  } else if (memory?.api === "v2") {
    resetV2Peak(cg, memory.dir);
  }
  cg.baseline = readCounters(cg);
}

function resetV2Peak(cg: JobCgroup, dir: string): void {
  if (cg.peakFd !== null) closeSync(cg.peakFd);
  cg.peakFd = null;
  const file = join(dir, "memory.peak");
  if (!existsSync(file)) return;
  // Since Linux 6.12 a write to memory.peak resets the peak seen through that file descriptor only, so
  // the descriptor must stay open until readUsage (cgroup-v2.rst, memory.peak).
  let fd: number | null = null;
  try {
    fd = openSync(file, "r+");
    writeSync(fd, "reset");
    cg.peakFd = fd;
    return;
  } catch {
    if (fd !== null) closeSync(fd);
  }
  // Older kernels cannot reset the peak. An empty v2 cgroup is cheap to recreate, which zeroes it.
  if (readPids(dir).length > 0 || subdirs(dir).length > 0) return;
  try {
    rmdirSync(dir);
    mkdirSync(dir);
  } catch {
    mkdirSync(dir, { recursive: true });
    return;
  }
  if (cg.lastLimits !== null) applyLimits(cg, cg.lastLimits);
}

function readCounters(cg: JobCgroup): UsageBaseline {
  const { cpuacct, memory, pids } = cg.sites;
  let cpuUsec = 0;
  if (cpuacct?.api === "v1") cpuUsec = (readNumber(join(cpuacct.dir, "cpuacct.usage")) ?? 0) / 1000;
  else if (cpuacct?.api === "v2") cpuUsec = readKeyed(join(cpuacct.dir, "cpu.stat"), "usage_usec") ?? 0;
  let oomKills = 0;
  if (memory?.api === "v1") oomKills = readKeyed(join(memory.dir, "memory.oom_control"), "oom_kill") ?? 0;
  // memory.events (not .local) counts kills anywhere in the job's subtree.
  else if (memory?.api === "v2") oomKills = readKeyed(join(memory.dir, "memory.events"), "oom_kill") ?? 0;
  const pidsLimitHit = pids === undefined ? 0 : (readKeyed(join(pids.dir, "pids.events"), "max") ?? 0);
  return { cpuUsec, oomKills, pidsLimitHit };
}

/** Reports what the job used since the last resetCounters; counters this host lacks read as 0. */
export function readUsage(cg: JobCgroup): Usage {
  const now = readCounters(cg);
  const memory = cg.sites.memory;
  let peakMemoryBytes = 0;
  if (memory?.api === "v1") {
    peakMemoryBytes = readNumber(join(memory.dir, "memory.max_usage_in_bytes")) ?? 0;
  } else if (memory?.api === "v2") {
    const text = cg.peakFd === null ? readText(join(memory.dir, "memory.peak")) : preadText(cg.peakFd);
    peakMemoryBytes = text === null ? 0 : Number(text.trim()) || 0;
  }
  return {
    peakMemoryBytes,
    cpuMs: Math.max(0, Math.round((now.cpuUsec - cg.baseline.cpuUsec) / 1000)),
    oomKills: Math.max(0, now.oomKills - cg.baseline.oomKills),
    pidsLimitHit: Math.max(0, now.pidsLimitHit - cg.baseline.pidsLimitHit),
  };
}

/** Lists every process in the job's cgroups and their descendants, across all hierarchies, sorted. */
export function listPids(cg: JobCgroup): number[] {
  const pids = new Set<number>();
  for (const dir of cg.dirs) {
    for (const sub of subtree(dir)) for (const pid of readPids(sub)) pids.add(pid);
  }
  return [...pids].sort((a, b) => a - b);
}

/**
 * Kills every process in the job's cgroups and resolves once every hierarchy's cgroup.procs is empty.
 * Uses cgroup.kill where cgroup2 has it; otherwise freezes, SIGKILLs each process and thaws, repeating.
 * Throws after timeoutMs, and at once if the calling process itself is inside.
 */
export async function killAll(cg: JobCgroup, timeoutMs = 5_000): Promise<void> {
  const start = performance.now();
  const deadline = start + timeoutMs;
  const unified = cg.sites.unified;
  const killFile = unified === undefined ? undefined : join(unified, "cgroup.kill");
  const canKill = killFile !== undefined && existsSync(killFile);
  let pause = 1;
  for (;;) {
    const pids = listPids(cg);
    if (pids.length === 0) return;
    if (pids.includes(process.pid)) {
      const message = `refusing to kill cgroup ${cg.relPath}: this process (${process.pid}) is inside it`;
      throw new AppError("CGROUP_KILL_SELF", message, { status: 500 });
    }
    // cgroup.kill only reaches processes in the cgroup2 directory; anything that joined only v1
    // hierarchies (a launcher that died half-way) needs the freeze-and-kill path too.
    const inUnified = new Set(unified === undefined ? [] : subtree(unified).flatMap(readPids));
    const stray = canKill ? pids.filter((p) => !inUnified.has(p)) : pids;
    if (canKill && inUnified.size > 0) writeIfExists(killFile, "1");
    // A killed task leaves the hierarchies one at a time as it exits, so right after cgroup.kill it can
    // look like a stray for a few milliseconds; only fall back once that window has passed.
    if (stray.length > 0 && (!canKill || performance.now() - start > STRAY_GRACE_MS)) {
      await freezeAndKill(cg, deadline);
    }
    if (performance.now() > deadline) {
      const left = listPids(cg);
      if (left.length === 0) return;
      throw new AppError(
        "CGROUP_KILL_TIMEOUT",
        `cgroup ${cg.relPath}: ${left.length} process(es) still alive ${timeoutMs} ms after SIGKILL ` +
          `(pids ${left.slice(0, 10).join(", ")}); a process stuck in uninterruptible sleep (D state) cannot die`,
        { status: 500 },
      );
    }
    await Bun.sleep(pause);
    pause = Math.min(pause * 2, 20);
  }
}

async function freezeAndKill(cg: JobCgroup, deadline: number): Promise<void> {
  const frozen = await freeze(cg, Math.min(deadline, performance.now() + 1_000));
  // Only while frozen is the pid list stable: nothing can fork, and a killed pid cannot be reused
  // before the thaw. Without a freezer a pid may be recycled between reading and killing (a known race).
  for (const pid of listPids(cg)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // ESRCH: it exited on its own.
    }
  }
  // Frozen tasks die of the SIGKILL only once thawed.
  if (frozen) thaw(cg);
}

async function freeze(cg: JobCgroup, until: number): Promise<boolean> {
  const site = cg.sites.freezer;
  if (site === undefined) return false;
  if (site.api === "v1") {
    if (!writeIfExists(join(site.dir, "freezer.state"), "FROZEN")) return false;
    // FREEZING becomes FROZEN once every task has stopped; a task in D state can hold it back.
    while (readText(join(site.dir, "freezer.state"))?.trim() !== "FROZEN" && performance.now() < until) {
      await Bun.sleep(1);
    }
    return true;
  }
  if (!writeIfExists(join(site.dir, "cgroup.freeze"), "1")) return false;
  while (readKeyed(join(site.dir, "cgroup.events"), "frozen") !== 1 && performance.now() < until) {
    await Bun.sleep(1);
  }
  return true;
}

function thaw(cg: JobCgroup): void {
  const site = cg.sites.freezer;
  if (site?.api === "v1") writeIfExists(join(site.dir, "freezer.state"), "THAWED");
  else if (site?.api === "v2") writeIfExists(join(site.dir, "cgroup.freeze"), "0");
}

/**
 * Kills everything in the job's cgroups, then removes them (and any sub-cgroups) from every hierarchy.
 * Idempotent: directories that are already gone are fine.
 */
export async function removeCgroup(cg: JobCgroup, timeoutMs = 5_000): Promise<void> {
  await killAll(cg, timeoutMs);
  if (cg.peakFd !== null) closeSync(cg.peakFd);
  cg.peakFd = null;
  const deadline = performance.now() + timeoutMs;
  for (const dir of cg.dirs) {
    // Children first: rmdir of a cgroup with child cgroups fails with EBUSY.
    for (const sub of subtree(dir).reverse()) {
      for (;;) {
        try {
          rmdirSync(sub);
          break;
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code === "ENOENT") break;
          // EBUSY right after a kill: the last exiting tasks are still being released.
          if (code !== "EBUSY" || performance.now() > deadline) {
            throw new AppError("CGROUP_REMOVE_FAILED", `cannot remove cgroup ${sub}`, {
              status: 500,
              cause: error,
            });
          }
          await Bun.sleep(2);
        }
      }
    }
  }
}

/**
 * Kills and removes every cgroup left under relParent (e.g. "kiln/w1") by an earlier run, in every
 * hierarchy, and returns their relative paths. A child holding this very process (the worker's own
 * "supervisor" cgroup, say) is left alone.
 */
export async function sweepCgroups(layout: CgroupLayout, relParent: string): Promise<string[]> {
  const parent = attachJobCgroup(layout, relParent);
  const names = new Set<string>();
  for (const dir of parent.dirs) for (const name of subdirs(dir)) names.add(name);
  const own = ownCgroupPaths();
  const removed: string[] = [];
  // One unkillable leftover must not keep the others alive: try all, then report every failure.
  const failures: unknown[] = [];
  for (const name of [...names].sort()) {
    const relPath = `${relParent}/${name}`;
    if (own.some((p) => p === relPath || p.startsWith(`${relPath}/`))) continue;
    try {
      await removeCgroup(attachJobCgroup(layout, relPath));
      removed.push(relPath);
    } catch (error) {
      failures.push(error);
    }
  }
  if (failures.length > 0) {
    const reasons = failures.map((e) => coerceError(e).message).join("; ");
    const message = `could not remove ${failures.length} leftover cgroup(s): ${reasons}`;
    throw new AppError("CGROUP_SWEEP_FAILED", message, { status: 500, cause: new AggregateError(failures) });
  }
  return removed;
}

// This process's cgroup in every hierarchy, relative to the hierarchy root (proc(5), /proc/pid/cgroup).
function ownCgroupPaths(): string[] {
  const text = readText("/proc/self/cgroup") ?? "";
  return text
    .split("\n")
    .map((line) => line.split(":").slice(2).join(":").replace(/^\//, ""))
    .filter((p) => p !== "");
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return [];
  }
}

// dir and every cgroup below it, parents before children.
function subtree(dir: string): string[] {
  return [dir, ...subdirs(dir).flatMap((name) => subtree(join(dir, name)))];
}

function readPids(dir: string): number[] {
  const text = readText(join(dir, "cgroup.procs"));
  if (text === null) return [];
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map(Number);
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

function preadText(fd: number): string {
  const buf = Buffer.alloc(64);
  const n = readSync(fd, buf, 0, buf.length, 0);
  return buf.toString("utf8", 0, n);
}

function readWords(path: string): string[] {
  return (readText(path) ?? "").split(/\s+/).filter((w) => w !== "");
}

function readNumber(path: string): number | null {
  const text = readText(path);
  if (text === null) return null;
  const n = Number(text.trim());
  return Number.isFinite(n) ? n : null;
}

// Reads "key value" lines (cpu.stat, memory.events, memory.oom_control, pids.events).
function readKeyed(path: string, key: string): number | null {
  const text = readText(path);
  if (text === null) return null;
  for (const line of text.split("\n")) {
    const [k, v] = line.split(" ");
    if (k === key && v !== undefined) return Number(v);
  }
  return null;
}

// Opens without O_CREAT: a missing interface file must fail (ENOENT), never be created, and the value must
// reach the kernel in a single write(2), which is how cgroupfs parses it.
function writeFile(path: string, value: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_TRUNC);
  try {
    writeSync(fd, value);
  } finally {
    closeSync(fd);
  }
}

function writeControl(dir: string, file: string, value: string | number): void {
  const path = join(dir, file);
  try {
    writeFile(path, String(value));
  } catch (error) {
    const message = `cannot write ${JSON.stringify(String(value))} to ${path}: ${coerceError(error).message}`;
    throw new AppError("CGROUP_WRITE_FAILED", message, { status: 500, cause: error });
  }
}

// For files that only some kernels or configurations have (feature-tested by their existence).
function writeOptional(dir: string, file: string, value: string | number): void {
  if (existsSync(join(dir, file))) writeControl(dir, file, value);
}

// For writes racing with removal: false when the file (or the whole cgroup) is gone.
function writeIfExists(path: string, value: string): boolean {
  try {
    writeFile(path, value);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

// Limiting a job: memory, cpu, pids, io weight and (v1) devices, each written to the hierarchy that
// controls it, every limit Kiln manages overwritten each time, and nothing written when one is refused.

import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { AppError } from "../../lib/errors.ts";
import { readKeyed, subdirs, writeControl, writeOptional } from "./files.ts";
import type { JobCgroup } from "./job.ts";

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

// Kernel default CFS period: the window in which a quota is enforced. Shorter periods smooth throttling
// but cost scheduler overhead, and 100 ms is what every container runtime uses.
const CPU_PERIOD_US = 100_000;
// The kernel rejects quotas below 1 ms (sched/core.c, min_cfs_quota_period).
const CPU_MIN_QUOTA_US = 1_000;

// The base device set every job gets on v1 (runc grants the same). "m" is included because the launcher
// may mknod these inside the job's /dev after joining the devices cgroup.
const BASE_DEVICES = ["c 1:3", "c 1:5", "c 1:7", "c 1:8", "c 1:9", "c 5:0", "c 5:2", "c 136:*"];

/**
 * Applies the job's limits, overwriting every limit Kiln manages so nothing from a previous job on the
 * same slot survives. Throws when a requested limit cannot be enforced on this host. When the cgroup
 * already holds exactly these limits (cg.applied: the previous job on the slot had the same, and nothing
 * changed them since; a job has no way to), nothing is written: a slot's jobs mostly ask for the same,
 * and each write to a v1 hierarchy can wait on the kernel's cgroup locks.
 */
export function applyLimits(cg: JobCgroup, limits: Limits): void {
  // Everything is checked before anything is written, so a refused job never leaves a half-applied set.
  checkLimits(cg, limits);
  const key = JSON.stringify([
    limits.memoryBytes,
    limits.cpus,
    limits.pids,
    limits.ioWeight,
    limits.devices ?? [],
  ]);
  if (cg.applied === key && !cg.extraRules) return;
  cg.applied = null;
  applyMemory(cg, limits.memoryBytes);
  applyCpu(cg, limits.cpus);
  applyPids(cg, limits.pids);
  applyIo(cg, limits.ioWeight);
  applyDevices(cg, limits.devices ?? []);
  cg.extraRules = false;
  cg.lastLimits = { ...limits };
  cg.applied = key;
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
  // Rules added and not withdrawn (a launch that failed before it said "ready") are not what applyLimits
  // wrote: the next job's limits are then written in full, which starts the exception list afresh.
  if (allow && rules.length > 0) cg.extraRules = true;
  for (const rule of rules) writeControl(site.dir, allow ? "devices.allow" : "devices.deny", rule);
  if (!allow) cg.extraRules = false;
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

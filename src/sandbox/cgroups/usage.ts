// Reading what a job used: peak memory, cpu time, OOM kills and pids-limit hits, each relative to the
// counters at the job's start (resetCounters), since a slot's cgroup is reused from job to job.

import { closeSync, existsSync, mkdirSync, openSync, rmdirSync, writeSync } from "node:fs";
import { join } from "node:path";
import { preadText, readKeyed, readNumber, readPids, readText, subdirs, writeOptional } from "./files.ts";
import type { JobCgroup } from "./job.ts";
import { applyLimits } from "./limits.ts";

/** What a job consumed since the last resetCounters. */
export interface Usage {
  /** Peak memory charged to the job, including page cache and tmpfs; 0 when the kernel cannot tell. */
  peakMemoryBytes: number;
  cpuMs: number;
  oomKills: number;
  /** How many times a fork or clone failed because the pids limit was reached. */
  pidsLimitHit: number;
}

/** Monotonic counters as read at resetCounters. */
export interface UsageBaseline {
  cpuUsec: number;
  oomKills: number;
  pidsLimitHit: number;
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
  cg.applied = null;
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

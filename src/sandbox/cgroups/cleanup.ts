// Emptying and removing cgroups: killing every process of a job (cgroup.kill, or freeze-and-kill where
// there is none), removing its directories in every hierarchy, and sweeping what an earlier run left.

import { closeSync, existsSync, rmdirSync } from "node:fs";
import { join } from "node:path";
import { AppError, coerceError } from "../../lib/errors.ts";
import type { CgroupLayout } from "./detect.ts";
import { readKeyed, readPids, readText, subdirs, subtree, writeIfExists } from "./files.ts";
import { attachJobCgroup, type JobCgroup } from "./job.ts";

// Killed tasks took up to 7 ms here to leave all eight hierarchies of a hybrid host.
const STRAY_GRACE_MS = 100;

/** Lists every process in the job's cgroups and their descendants, across all hierarchies, sorted. */
export function listPids(cg: JobCgroup): number[] {
  const pids = new Set<number>();
  for (const dir of cg.dirs) {
    for (const sub of subtree(dir)) for (const pid of readPids(sub)) pids.add(pid);
  }
  return [...pids].sort((a, b) => a - b);
}

/**
 * True when no process is left in the job's cgroups. Every process of a job is in all of them (the
 * launcher joins each before it starts anything, and a job sees no cgroupfs and holds no capability to
 * move itself), so where the job has a cgroup2 directory its `populated` flag, which covers the whole
 * subtree, answers for every hierarchy in one read; elsewhere each hierarchy is listed (listPids).
 */
export function isEmpty(cg: JobCgroup): boolean {
  const unified = cg.sites.unified;
  const events = unified === undefined ? null : readText(join(unified, "cgroup.events"));
  const populated = events === null ? null : /^populated (\d)$/m.exec(events)?.[1];
  if (populated === "0") return true;
  if (populated === "1") return false;
  return listPids(cg).length === 0;
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

/** Lets a frozen job cgroup run again (v1 freezer.state or cgroup.freeze); a no-op without a freezer. */
export function thaw(cg: JobCgroup): void {
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

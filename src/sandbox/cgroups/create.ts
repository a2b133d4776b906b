// Creating a job's cgroup: the directories in every hierarchy, the controllers delegated down to it on
// cgroup2, and a clean slate (thawed, no limits but the base device set, counters reset).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { AppError } from "../../lib/errors.ts";
import { thaw } from "./cleanup.ts";
import type { CgroupLayout } from "./detect.ts";
import { readWords, writeFile } from "./files.ts";
import { attachJobCgroup, type JobCgroup } from "./job.ts";
import { applyLimits } from "./limits.ts";
import { resetCounters } from "./usage.ts";

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

import { readFileSync, writeFileSync } from "node:fs";

/*
 * Memory of a running process from /proc (proc(5)): the resident set now, and its peak since a reset.
 * Writing "5" to /proc/PID/clear_refs sets the peak (VmHWM) back to the current resident set, so a
 * measurement sees only what happened after it began.
 */

const field = (pid: number, name: string) => {
  const m = new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error(`no ${name} for pid ${pid}`);
  return Number(m[1]) * 1024;
};

/** Starts a measurement of `pid`: returns its resident bytes now, from which its peak is counted again. */
export function startPeak(pid: number): number {
  writeFileSync(`/proc/${pid}/clear_refs`, "5");
  return field(pid, "VmRSS");
}

/** How far the resident set of `pid` rose above `base` (from startPeak) at its highest since then. */
export function peakGrowth(pid: number, base: number): number {
  return Math.max(0, field(pid, "VmHWM") - base);
}

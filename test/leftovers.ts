import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { slotUid } from "../src/sandbox/uids.ts";

/*
 * What a test's kiln roles may leave on the host once they have stopped: processes, mounts, loop devices
 * and cgroups. Other engineers run Kiln on the same host at the same time, so everything here is scoped
 * to what the test started: its roles' data dirs and its workers' names. A name is also someone else's
 * when another live process holds its host-wide lock; that worker's cgroups and slot uids are left alone.
 */

/** A role the harness started, as far as leftovers go: its pid, its data dir and its workers' names. */
export interface RoleTrace {
  pid: number;
  /** The role's --data dir, absolute. */
  data: string;
  /** Worker names it ran under (from --name, or learnt from the host-wide worker lock). */
  workers: Set<string>;
}

/** The default sandbox.uid_base: slot uids of worker NAME are slotUid(base, NAME, 0) and the 1023 after it. */
const UID_BASE = 1_500_000_000;
/** The default sandbox.cgroup_parent, below which every worker has a cgroup of its name in each hierarchy. */
const CGROUP_PARENT = "kiln";
const LOCK_DIRS = ["/run/kiln", join(tmpdir(), `kiln-${process.getuid?.() ?? 0}`)];

/** The holder a worker lock names ("kiln worker NAME (pid PID, ...)"), for every worker lock on the host. */
function workerLocks(): { name: string; pid: number }[] {
  const out: { name: string; pid: number }[] = [];
  for (const dir of LOCK_DIRS) {
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      continue; // No worker has run as this user yet.
    }
    for (const f of names) {
      const m = /^worker-(.+)\.lock$/.exec(f);
      if (!m) continue;
      try {
        const pid = Number(/\(pid (\d+),/.exec(readFileSync(join(dir, f), "utf8"))?.[1]);
        if (pid) out.push({ name: m[1]!, pid });
      } catch {
        // Removed while we read: nobody holds it.
      }
    }
  }
  return out;
}

/** Adds to each role the worker names whose lock names the role's pid (an `up`, or a worker without --name). */
export function learnWorkerNames(roles: RoleTrace[]): void {
  const locks = workerLocks();
  for (const r of roles) for (const l of locks) if (l.pid === r.pid) r.workers.add(l.name);
}

const alive = (pid: number) => existsSync(`/proc/${pid}`);

function read(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return ""; // The process ended while we looked.
  }
}

function link(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return "";
  }
}

const under = (path: string, dirs: string[]) => dirs.some((d) => path === d || path.startsWith(`${d}/`));

/** Every process on the host: pid, parent, uids and command line. */
function processes() {
  return readdirSync("/proc")
    .filter((n) => /^\d+$/.test(n))
    .map((n) => {
      const status = read(`/proc/${n}/status`);
      return {
        pid: Number(n),
        ppid: Number(/^PPid:\s+(\d+)/m.exec(status)?.[1] ?? 0),
        uids: (/^Uid:\s+(.*)$/m.exec(status)?.[1] ?? "").split(/\s+/).map(Number),
        cmd: read(`/proc/${n}/cmdline`).replace(/\0/g, " ").trim(),
        cwd: link(`/proc/${n}/cwd`),
        exe: link(`/proc/${n}/exe`),
      };
    });
}

/**
 * What roles `ended` left behind, one line each, while roles `running` still run (a restarted master or
 * worker may own the same data dir or name, and what belongs to it is not left behind). Empty when
 * nothing is.
 */
export function leftoversOf(ended: RoleTrace[], running: RoleTrace[]): string[] {
  learnWorkerNames([...ended, ...running]);
  const runningDirs = running.map((r) => r.data);
  const dirs = [...new Set(ended.map((r) => r.data))].filter((d) => !under(d, runningDirs));
  const runningNames = new Set(running.flatMap((r) => [...r.workers]));
  const ours = new Set([...ended, ...running].map((r) => r.pid));
  // A name whose lock another live process holds is another engineer's worker of the same name.
  const heldElsewhere = new Set(
    workerLocks()
      .filter((l) => !ours.has(l.pid) && alive(l.pid))
      .map((l) => l.name),
  );
  const names = [...new Set(ended.flatMap((r) => [...r.workers]))].filter(
    (n) => !runningNames.has(n) && !heldElsewhere.has(n),
  );
  const uidRanges = names.map((n) => [slotUid(UID_BASE, n, 0), n] as const);
  const left: string[] = [];

  const procs = processes();
  const parent = new Map(procs.map((p) => [p.pid, p.ppid]));
  const runningPids = new Set(running.map((r) => r.pid));
  const inRunningRole = (pid: number) => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; p = parent.get(p) ?? 0, hops++)
      if (runningPids.has(p)) return true;
    return false;
  };
  for (const p of procs) {
    if (p.pid === process.pid || inRunningRole(p.pid)) continue;
    const uidOf = uidRanges.find(([base]) => p.uids.some((u) => u >= base && u < base + 1024));
    const why = uidOf
      ? `runs as a slot uid of worker ${uidOf[1]}`
      : dirs.some((d) => p.cmd.includes(d))
        ? "names a data dir of the test"
        : under(p.cwd, dirs)
          ? `works in ${p.cwd}`
          : under(p.exe, dirs)
            ? `runs ${p.exe}`
            : null;
    if (why) left.push(`process ${p.pid} (${why}): ${p.cmd.slice(0, 200)}`);
  }

  for (const line of read("/proc/self/mountinfo").split("\n")) {
    const point = line.split(" ")[4]?.replace(/\\040/g, " ");
    if (point && under(point, dirs)) left.push(`mount at ${point}`);
  }

  for (const dev of readdirSync("/sys/block").filter((d) => d.startsWith("loop"))) {
    const backing = read(`/sys/block/${dev}/loop/backing_file`).trim();
    if (backing && under(backing.replace(/ \(deleted\)$/, ""), dirs))
      left.push(`loop device /dev/${dev} on ${backing}`);
  }

  // Where "cpu" and "cpuacct" are links to one "cpu,cpuacct" hierarchy, it is named once.
  const hierarchies = existsSync("/sys/fs/cgroup/cgroup.controllers")
    ? ["/sys/fs/cgroup"]
    : [...new Set(readdirSync("/sys/fs/cgroup").map((h) => realpathSync(join("/sys/fs/cgroup", h))))];
  for (const h of hierarchies)
    for (const n of names) {
      const cg = join(h, CGROUP_PARENT, n);
      if (existsSync(cg)) left.push(`cgroup ${cg}`);
    }
  return left;
}

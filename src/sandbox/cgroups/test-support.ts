import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CgroupLayout, JobCgroup } from "./index.ts";

/*
 * Helpers shared by the cgroup tests (*.test.ts in this folder), never imported by Kiln itself: a fake
 * cgroup2 tree for the files a pure v2 host gets, and shell jobs started inside real cgroups as root.
 */

/** Whether the tests on real cgroups can run; they skip (and say so) otherwise. */
export const isRoot = process.getuid?.() === 0;

/** One mebibyte, for limits. */
export const MiB = 1024 * 1024;

/** A fake cgroup2 hierarchy in a temp dir that removes itself; see fakeV2Hierarchy. */
export interface FakeV2 {
  root: string;
  layout: CgroupLayout;
  /** root/parts... */
  file(...parts: string[]): string;
  /** The text of root/parts... */
  read(...parts: string[]): string;
  [Symbol.dispose](): void;
}

/**
 * A directory of plain files shaped like a cgroup2 hierarchy, with a kiln/slot-0 leaf that has the
 * interface files of a host with every controller and some usage counted. It shows which files get which
 * values on a pure v2 host, which this project's hybrid machines cannot show for real.
 */
export function fakeV2Hierarchy(): FakeV2 {
  const root = mkdtempSync(join(tmpdir(), "kiln-cgv2-"));
  const file = (...parts: string[]) => join(root, ...parts);
  for (const dir of ["", "kiln"]) {
    mkdirSync(file(dir), { recursive: true });
    writeFileSync(file(dir, "cgroup.controllers"), "cpuset cpu io memory pids\n");
    writeFileSync(file(dir, "cgroup.subtree_control"), dir === "" ? "cpu\n" : "");
  }
  const leaf = file("kiln", "slot-0");
  mkdirSync(leaf);
  for (const name of [
    "memory.max",
    "memory.swap.max",
    "memory.oom.group",
    "cpu.max",
    "pids.max",
    "io.weight",
  ]) {
    writeFileSync(join(leaf, name), "");
  }
  writeFileSync(join(leaf, "cgroup.procs"), "");
  writeFileSync(join(leaf, "cpu.stat"), "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\n");
  writeFileSync(join(leaf, "memory.events"), "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n");
  writeFileSync(join(leaf, "pids.events"), "max 3\n");
  return {
    root,
    layout: { mode: "v2", unified: root, v1: {} },
    file,
    read: (...parts) => readFileSync(file(...parts), "utf8"),
    [Symbol.dispose]: () => rmSync(root, { recursive: true, force: true }),
  };
}

/**
 * A cgroup name unique to this process and call, at the top of every hierarchy, under which a test file
 * makes its job cgroups; the file removes it with removeCgroup(attachJobCgroup(layout, parent)).
 */
export function testParent(): string {
  return `kiln-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Every mount of the layout (v1 hierarchies and cgroup2) that still has `relPath`; empty once removed. */
export function leftIn(layout: CgroupLayout, relPath: string): string[] {
  const mounts = new Set([...Object.values(layout.v1), ...(layout.unified ? [layout.unified] : [])]);
  return [...mounts].filter((m) => existsSync(join(m, relPath)));
}

/** Starts a shell that first moves itself into every hierarchy of the job cgroup, as the launcher does. */
export function startIn(cg: JobCgroup, script: string) {
  const joinAll = cg.procsFiles.map((f) => `echo $$ > ${f} || exit 99`).join("\n");
  return Bun.spawn(["sh", "-c", `${joinAll}\n${script}`], { stdout: "pipe", stderr: "pipe" });
}

/** Runs a script inside the job cgroup (see startIn) to its end, with what it printed. */
export async function runIn(cg: JobCgroup, script: string) {
  const proc = startIn(cg, script);
  const [stdout, stderr, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { exitCode, stdout, stderr };
}

/** Whether pid is a live process; a zombie still answers kill(pid, 0), so its state is read instead. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2)[0];
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

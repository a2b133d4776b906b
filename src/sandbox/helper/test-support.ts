/**
 * What the launcher's tests share: running a host tool, building a small root from host programs, and
 * the mounts a test may leave behind. Test code only.
 */
import { mkdirSync, readFileSync, symlinkSync } from "node:fs";
import { join } from "node:path";

/** CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID (bits 0-1, 3-7) and SETFCAP (31): what --build and a setup keep. */
export const BUILD_CAPS = "00000000800000fb";

/** Runs a host tool and returns its stdout; throws with its stderr when it fails, unless ok is false. */
export function sh(cmd: string[], opts: { ok?: boolean } = {}): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (opts.ok !== false && r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

/**
 * A root at dir/name made of real files (an overlay's lower layer sees no submounts, so binding /usr in
 * would not do): the host's `programs` with their libraries, `sh` linked as /usr/bin/sh, /bin a link to
 * usr/bin, and an empty /etc.
 */
export function makeRoot(dir: string, name: string, programs: string[]): string {
  const root = join(dir, name);
  mkdirSync(join(root, "etc"), { recursive: true });
  for (const prog of programs) {
    const file = sh(["readlink", "-f", Bun.which(prog)!]).trim();
    const libs = sh(["ldd", file]).match(/\/\S+/gm) ?? [];
    sh(["cp", "--parents", "-L", file, ...libs, root]);
    if (prog === "sh") symlinkSync(file.split("/").pop()!, join(root, "usr/bin/sh"));
  }
  symlinkSync("usr/bin", join(root, "bin"));
  return root;
}

/** Everything about a tree that a write could change. */
export const treeState = (root: string) => sh(["find", root, "-printf", "%p %m %u %s %T@\n"]);

/** The host's mounts whose line names dir: what a test's launches must not leave behind. */
export const mountsUnder = (dir: string) =>
  readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .filter((l) => l.includes(dir))
    .join("\n");

/**
 * The launcher's build mode (`--build`, `--rw-root`), which template builds run in: uid 0 with eight
 * capabilities, NoNewPrivs and seccomp, writing only to the tree being built. Every test is a real run of
 * the helper as root (dist/kiln-sandbox, built by scripts/build).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { join, resolve } from "node:path";
import { BUILD_CAPS, makeRoot, mountsUnder, sh } from "./test-support.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn("kiln-sandbox build mode tests skipped: they need root");
const HELPER = resolve(import.meta.dir, "../../../dist/kiln-sandbox");
const ENV = { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", LANG: "C" };

let dir = "";
let mountsAtStart = "";
const mounts = () => mountsUnder(dir);

/* A tree made of a few host programs and their libraries, as debootstrap's first stage would leave one. */
const makeTree = (name: string) =>
  makeRoot(dir, name, "sh cat touch id ls mkdir grep chown stat mknod mount unshare tr".split(" "));

async function run(args: string[], script: string) {
  const p = Bun.spawn([HELPER, "--build", "--chdir", "/", ...args, "--", "/bin/sh", "-c", script], {
    stdout: "pipe",
    stderr: "pipe",
    env: ENV,
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { stdout, stderr, code };
}

beforeAll(() => {
  if (!isRoot) return;
  dir = mkdtempSync("/var/tmp/kiln-c-buildmode-");
  mountsAtStart = mounts();
});
afterAll(() => {
  if (!isRoot) return;
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!isRoot)("kiln-sandbox --build", () => {
  test("a host step is root with only the build capabilities, and writes only to the tree at /target", async () => {
    const tree = join(dir, "target");
    mkdirSync(tree);
    const r = await run(
      ["--bind", `${tree}:/target`, "--mask", dir],
      [
        "id -u",
        "grep -E '^(CapBnd|CapEff|CapPrm|NoNewPrivs|Seccomp):' /proc/self/status",
        "touch /target/made && chown 1234:1234 /target/made && echo wrote-tree",
        "touch /usr/kiln-c-x 2>&1",
        "mount -t tmpfs none /tmp 2>&1 || echo mount-refused",
        "unshare --mount true 2>&1 || echo unshare-refused",
        "mknod /tmp/sda b 8 0 2>&1 || echo mknod-refused",
        "ls /sys | wc -l",
      ].join("; "),
    );
    expect(r.code, r.stderr).toBe(0);
    const out = r.stdout;
    expect(out).toStartWith("0\n");
    for (const set of ["CapBnd", "CapEff", "CapPrm"]) expect(out).toContain(`${set}:\t${BUILD_CAPS}`);
    expect(out).toContain("NoNewPrivs:\t1");
    expect(out).toContain("Seccomp:\t2");
    expect(out).toContain("wrote-tree");
    expect(statSync(join(tree, "made")).uid).toBe(1234);
    expect(out).toContain("Read-only file system");
    expect(existsSync("/usr/kiln-c-x")).toBe(false);
    for (const what of ["mount", "unshare", "mknod"]) expect(out).toContain(`${what}-refused`);
    expect(mounts()).toBe(mountsAtStart);
  });

  test("with --rw-root the tree itself is /, writable, and nothing of the host shows", async () => {
    const tree = makeTree("tree");
    const r = await run(
      ["--root", tree, "--rw-root"],
      [
        "echo built > /etc/made-inside && chown 42:42 /etc/made-inside && echo wrote",
        `ls ${dir} 2>&1 || echo host-hidden`,
        "ls /.kiln-host 2>&1 || echo no-host-root",
        "n=0; for f in /proc/[0-9]*; do n=$((n + 1)); done; echo procs=$n",
        "touch /kiln/x 2>&1 || echo kiln-read-only",
      ].join("; "),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("wrote");
    expect(readFileSync(join(tree, "etc/made-inside"), "utf8")).toBe("built\n");
    expect(statSync(join(tree, "etc/made-inside")).uid).toBe(42);
    expect(r.stdout).toContain("host-hidden");
    expect(r.stdout).toContain("no-host-root");
    expect(r.stdout).toContain("kiln-read-only");
    // PID 1, the shell, the loop's ls: a handful, never the host's hundreds.
    expect(Number(/procs=(\d+)/.exec(r.stdout)?.[1])).toBeLessThan(10);
    expect(mounts()).toBe(mountsAtStart);
  });

  test("a link the tree holds where the sandbox mounts is refused, never followed to the host", async () => {
    const tree = makeTree("linked");
    const victim = join(dir, "victim");
    mkdirSync(victim);
    symlinkSync(`/.kiln-host${victim}`, join(tree, "dev"));
    const r = await run(["--root", tree, "--rw-root"], "echo ran");
    expect(r.code).toBe(127);
    expect(r.stdout).not.toContain("ran");
    expect(r.stderr).toContain("error dev: mkdir /dev");
    expect(sh(["ls", "-A", victim])).toBe("");
    expect(mounts()).toBe(mountsAtStart);
  });

  test("build mode runs only as root, and --rw-root only on a --root", async () => {
    const asUser = await run(["--uid", "5", "--gid", "5"], "true");
    expect([asUser.code, asUser.stderr]).toEqual([
      125,
      "error args: --build runs as root: no --uid, --gid, --groups\n",
    ]);
    const noRoot = await run(["--rw-root"], "true");
    expect(noRoot.stderr).toContain("--rw-root needs --root DIR");
  });
});

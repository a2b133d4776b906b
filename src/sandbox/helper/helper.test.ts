/**
 * Tests of the kiln-sandbox helper (kiln-sandbox.c): every test is a real run of the helper, as root, and
 * asserts what a job or the host could observe. They build the helper with scripts/build-helper first.
 *
 * Launch time of `/bin/true` through the helper, spawned from Bun until it exits (median of 50 runs, two
 * rounds, measured with a throw-away script; Debian 12, kernel 6.18, a 2-vCPU Firecracker VM that other
 * builds were loading, `--root /` with ~20 host mounts):
 *   default 64 MiB tmpfs scratch   9.8 to 10.9 ms
 *   loop-mounted ext4 scratch      14.5 to 16.4 ms (image already formatted; about 6 ms of it is the
 *                                  kernel tearing the ext4 mount and the loop device down at exit)
 * For scale, on the same machine in the same runs: Bun.spawn("/bin/true") 2.4 to 3.4 ms, util-linux
 * `unshare -mnpfiuC --mount-proc true` (which builds no root at all) 9.0 to 15.0 ms.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { waitFor } from "../../../test/harness.ts";
import { attachLoop, loopBackedBy } from "../loop-device.ts";
import { makeRoot, sh, treeState } from "./test-support.ts";

const isRoot = process.getuid?.() === 0;
const REPO = resolve(import.meta.dir, "../../..");
const UID = 61000;
const GID = 61000;
const ENV = {
  PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  HOME: "/tmp/home",
  LANG: "C",
};

/* Everything lives under /var/tmp: the jobs see the host's /var (read-only), but not its /tmp. */
let dir = "";
let helper = "";
let probe = "";
let image = "";
let seq = 0;
let mountsAtStart = "";
let loopsAtStart = "";
const cleanups: (() => void)[] = [];

const hostMounts = () => readFileSync("/proc/self/mountinfo", "utf8");
/* Loop devices backed by this suite's files: other users of the machine may attach their own meanwhile. */
const hostLoops = () =>
  sh(["losetup", "-a"])
    .split("\n")
    .filter((l) => l.includes(dir))
    .join("\n");
const loopsOf = (file: string) => sh(["losetup", "-j", file]).trim();

function makeImage(name: string, mib = 64): string {
  const file = join(dir, name);
  sh(["truncate", "-s", `${mib}M`, file]);
  sh(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", file]);
  return file;
}

/* A tiny root of a few host programs, plus `opt/writable`, owned by the job user. */
function makeMiniRoot(name: string): string {
  const root = makeRoot(
    dir,
    name,
    "sh cat touch dd stat df id ls mkdir grep sleep cut head tail wc".split(" "),
  );
  mkdirSync(join(root, "opt/writable"), { recursive: true });
  writeFileSync(join(root, "etc/marker"), "from-template\n");
  sh(["chown", `${UID}:${GID}`, join(root, "opt/writable")]);
  return root;
}

interface Started {
  proc: Bun.Subprocess<"ignore", "pipe", "pipe">;
  status: () => string[];
  holdFd?: number;
}

function start(
  args: string[],
  cmd: string[],
  o: { env?: Record<string, string>; hold?: boolean } = {},
): Started {
  const statusPath = join(dir, `status-${++seq}`);
  const statusFd = openSync(statusPath, "w");
  const hold = o.hold ? ["--hold-fd", "4"] : [];
  const stdio: ("ignore" | "pipe" | number)[] = ["ignore", "pipe", "pipe", statusFd];
  if (o.hold) stdio.push("pipe"); // a socketpair: the helper sees EOF on fd 4 when we close our end
  const argv = [
    helper,
    "--uid",
    `${UID}`,
    "--gid",
    `${GID}`,
    "--status-fd",
    "3",
    ...hold,
    ...args,
    "--",
    ...cmd,
  ];
  // biome-ignore lint/suspicious/noExplicitAny: Bun's stdio typing does not cover extra fds
  const proc = Bun.spawn(argv, { stdio: stdio as any, env: o.env ?? ENV }) as Started["proc"];
  closeSync(statusFd);
  const status = () => readFileSync(statusPath, "utf8").split("\n").filter(Boolean);
  const holdFd = o.hold ? (proc.stdio[4] as unknown as number) : undefined;
  return { proc, status, holdFd };
}

async function finish(s: Started) {
  const [stdout, stderr, code] = await Promise.all([
    new Response(s.proc.stdout).text(),
    new Response(s.proc.stderr).text(),
    s.proc.exited,
  ]);
  return { stdout, stderr, code, status: s.status() };
}

const run = (args: string[], script: string, o: { env?: Record<string, string> } = {}) =>
  finish(start(args, ["/bin/sh", "-c", script], o));

const readyPid = (status: string[]) => Number(status.find((l) => l.startsWith("ready "))?.slice(6));

/* A small C program for what the shell cannot do: raw syscalls, each reported as name=ok|ERRNO. */
const PROBE_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fanotify.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void *thread_fn(void *a) { return a; }
static long reap(long pid) { if (pid == 0) _exit(0); if (pid > 0) waitpid((pid_t)pid, NULL, 0); return pid; }

/* In a child with its own session, opens a pty slave (it becomes the controlling tty) and ioctls it. */
static long tty_ioctl(unsigned long req) {
  int p[2], e = -1;
  if (pipe(p) < 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    grantpt(m);
    unlockpt(m);
    int s = open(ptsname(m), O_RDWR);
    char buf[64] = "x";
    e = syscall(SYS_ioctl, s, req, buf) < 0 ? errno : 0;
    if (write(p[1], &e, sizeof e) < 0) _exit(1);
    _exit(0);
  }
  if (read(p[0], &e, sizeof e) != sizeof e) e = EIO;
  waitpid(pid, NULL, 0);
  errno = e;
  return e ? -1 : 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  for (int i = 1; i < argc; i++) {
    const char *n = argv[i];
    long r = -1;
    errno = 0;
    if (!strcmp(n, "unshare-user")) r = unshare(CLONE_NEWUSER);
    else if (!strcmp(n, "unshare-mnt")) r = unshare(CLONE_NEWNS);
    else if (!strcmp(n, "clone-newuser")) r = reap(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    else if (!strcmp(n, "clone-newnet")) r = reap(syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0));
    else if (!strcmp(n, "clone3")) {
      struct clone_args a;
      memset(&a, 0, sizeof a);
      a.exit_signal = SIGCHLD;
      r = reap(syscall(SYS_clone3, &a, sizeof a));
    } else if (!strcmp(n, "fork")) r = reap(fork());
    else if (!strcmp(n, "thread")) {
      pthread_t t;
      int rc = pthread_create(&t, NULL, thread_fn, NULL);
      if (rc == 0) r = pthread_join(t, NULL); else errno = rc;
    } else if (!strcmp(n, "mount")) r = mount("none", "/tmp", "tmpfs", 0, "");
    else if (!strcmp(n, "umount")) r = umount2("/tmp", MNT_DETACH);
    else if (!strcmp(n, "chroot")) r = chroot("/");
    else if (!strcmp(n, "pivot_root")) r = syscall(SYS_pivot_root, "/tmp", "/tmp");
    else if (!strcmp(n, "setns")) r = setns(open("/proc/self/ns/uts", O_RDONLY), 0);
    else if (!strcmp(n, "open_tree")) r = syscall(SYS_open_tree, AT_FDCWD, "/", 0);
    else if (!strcmp(n, "fsopen")) r = syscall(SYS_fsopen, "tmpfs", 0);
    else if (!strcmp(n, "move_mount")) r = syscall(SYS_move_mount, -1, "", -1, "", 0);
    else if (!strcmp(n, "keyctl")) r = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0);
    else if (!strcmp(n, "add_key")) r = syscall(SYS_add_key, "user", "kiln-test", "x", 1, KEY_SPEC_PROCESS_KEYRING);
    else if (!strcmp(n, "request_key")) r = syscall(SYS_request_key, "user", "kiln-test", NULL, 0);
    else if (!strcmp(n, "bpf")) r = syscall(SYS_bpf, 0, NULL, 0);
    else if (!strcmp(n, "perf_event_open")) r = syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    else if (!strcmp(n, "userfaultfd")) r = syscall(SYS_userfaultfd, 0);
    else if (!strcmp(n, "name_to_handle_at")) r = syscall(SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0);
    else if (!strcmp(n, "personality-linux32")) r = personality(PER_LINUX32);
    else if (!strcmp(n, "personality-query")) r = personality(0xffffffff);
    else if (!strcmp(n, "tiocsti")) r = tty_ioctl(TIOCSTI);
    else if (!strcmp(n, "tiocsti-high-bits")) r = tty_ioctl(0x100000000UL | TIOCSTI);
    else if (!strcmp(n, "tiocgwinsz")) r = tty_ioctl(TIOCGWINSZ);
    else if (!strcmp(n, "x32")) r = syscall(0x40000000 | SYS_getpid);
    else if (!strcmp(n, "io_uring_setup")) {
      struct io_uring_params p;
      memset(&p, 0, sizeof p);
      r = syscall(SYS_io_uring_setup, 1, &p);
    } else if (!strcmp(n, "io_uring_enter")) r = syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0);
    else if (!strcmp(n, "io_uring_register")) r = syscall(SYS_io_uring_register, -1, 0, NULL, 0);
    else if (!strcmp(n, "fanotify_init")) r = syscall(SYS_fanotify_init, FAN_CLASS_NOTIF | FAN_REPORT_FID, 0);
    else if (!strcmp(n, "syslog")) r = syscall(SYS_syslog, 10, NULL, 0); /* SYSLOG_ACTION_SIZE_BUFFER */
    else if (!strcmp(n, "sysfs")) r = syscall(SYS_sysfs, 3); /* how many filesystem types */
    else if (!strcmp(n, "ustat")) {
      struct stat st;
      char buf[64];
      stat("/", &st);
      r = syscall(SYS_ustat, (unsigned)st.st_dev, buf);
    } else if (!strcmp(n, "userfaultfd-user")) r = syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */);
    printf("%s=%s\n", n, r < 0 ? strerrorname_np(errno) : "ok");
  }
  return 0;
}
`;

function parseProbe(out: string): Record<string, string> {
  return Object.fromEntries(
    out
      .trim()
      .split("\n")
      .map((l) => l.split("=") as [string, string]),
  );
}

/* Namespaces, mounts and loop devices need root: elsewhere every test is skipped, with this message. */
const rootTest = test.skipIf(!isRoot);
if (!isRoot)
  console.warn("kiln-sandbox helper tests skipped: they need root (namespaces, mounts, loop devices)");

describe("kiln-sandbox", () => {
  beforeAll(() => {
    if (!isRoot) return;
    mountsAtStart = hostMounts();
    dir = mkdtempSync("/var/tmp/kiln-helper-test-");
    chmodSync(dir, 0o755);
    loopsAtStart = hostLoops();
    helper = join(dir, "kiln-sandbox");
    sh([join(REPO, "scripts/build-helper"), helper]);
    writeFileSync(join(dir, "probe.c"), PROBE_C);
    probe = join(dir, "probe");
    sh(["gcc", "-static", "-O1", "-o", probe, join(dir, "probe.c"), "-lpthread"]);
    image = makeImage("scratch.img");
  });

  afterEach(() => {
    for (let f = cleanups.pop(); f; f = cleanups.pop()) {
      try {
        f();
      } catch (err) {
        console.error(`cleanup: ${err}`);
      }
    }
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  rootTest("runs a job: stdout, stderr, environment and exit code come back", async () => {
    const script = 'echo out; echo err >&2; echo "$KILN_X"; ls /proc/self/fd | tr "\\n" " "; exit 3';
    const r = await run([], script, { env: { ...ENV, KILN_X: "hello" } });
    expect(r.stdout).toBe("out\nhello\n0 1 2 3 "); // 3 is ls's own: no fd of the helper leaks in
    expect(r.stderr).toBe("err\n");
    expect(r.code).toBe(3);
    expect(r.status).toHaveLength(2);
    expect(r.status[0]).toMatch(/^ready \d+$/);
    expect(readyPid(r.status)).toBeGreaterThan(1);
    expect(r.status[1]).toBe("exit 3");
  });

  rootTest("a job killed by a signal reports it", async () => {
    const r = await run([], "kill -TERM $$");
    expect(r.status.at(-1)).toBe("signal 15");
    expect(r.code).toBe(128 + 15);
  });

  rootTest("SIGTERM to the helper reaches the job", async () => {
    const s = start([], ["/bin/sh", "-c", 'trap "echo got-term; exit 7" TERM; while :; do sleep 0.02; done']);
    await waitFor("ready", () => s.status().length > 0);
    await Bun.sleep(50);
    s.proc.kill("SIGTERM");
    const r = await finish(s);
    expect(r.stdout).toBe("got-term\n");
    expect(r.status.at(-1)).toBe("exit 7");
    expect(r.code).toBe(7);
  });

  rootTest("killing the helper takes the whole sandbox down, scratch included", async () => {
    const marker = `1000.${Date.now() % 100000}1`;
    const img = makeImage("killed.img");
    const s = start(["--scratch-file", img], ["/bin/sh", "-c", `setsid sleep ${marker} & sleep ${marker}`]);
    const sleeps = () => sh(["pgrep", "-f", `^sleep ${marker}`], { ok: false }).trim();
    await waitFor("both sleeps", () => sleeps().split("\n").length === 2 && s.status().length === 1);
    s.proc.kill("SIGKILL");
    await s.proc.exited;
    await waitFor("the job to go", () => sleeps() === "");
    await waitFor("the loop device to go", () => loopsOf(img) === "");
    expect(s.status()).toEqual([`ready ${readyPid(s.status())}`]);
  });

  rootTest("if PID 1 is killed from outside, the helper reports error init", async () => {
    const s = start([], ["/bin/sleep", "1000"]);
    await waitFor("ready", () => s.status().length === 1);
    process.kill(readyPid(s.status()), "SIGKILL");
    const r = await finish(s);
    expect(r.status[1]).toBe("error init: the sandbox's init was killed by signal 9");
    expect(r.code).toBe(125);
  });

  rootTest("the sandbox dies with its parent (the worker)", async () => {
    const marker = `1000.${Date.now() % 100000}2`;
    const parent = Bun.spawn([
      "/bin/bash",
      "-c",
      `${helper} --uid ${UID} --gid ${GID} -- /bin/sleep ${marker} & wait`,
    ]);
    await waitFor("the job", () => sh(["pgrep", "-f", `^/bin/sleep ${marker}`], { ok: false }) !== "");
    parent.kill("SIGKILL");
    await parent.exited;
    await waitFor("the sandbox to go", () => sh(["pgrep", "-f", `sleep ${marker}`], { ok: false }) === "");
  });

  rootTest("exec failure is reported as error exec", async () => {
    const r = await finish(start([], ["/no/such/program"]));
    expect(r.status).toEqual(["error exec: /no/such/program: No such file or directory"]);
    expect(r.code).toBe(127);
  });

  rootTest(
    "a script without #! and a long argument list runs: execvp's fallback copies argv onto the job's stack",
    async () => {
      // The job starts on a stack of its own, sharing PID 1's memory until exec; this fallback once
      // overflowed it (SIGSEGV of the whole sandbox).
      const bin = mkdtempSync("/var/tmp/kiln-helper-script-");
      try {
        chmodSync(bin, 0o755);
        const script = join(bin, "no-shebang");
        writeFileSync(script, 'echo ran "$#"\n', { mode: 0o755 });
        const r = await finish(start([], [script, ...Array.from({ length: 60_000 }, (_, i) => `${i}`)]));
        expect([r.stdout.trim(), r.code, r.status.at(-1)]).toEqual(["ran 60000", 0, "exit 0"]);
      } finally {
        rmSync(bin, { recursive: true, force: true });
      }
    },
  );

  rootTest("set-up failure: a missing scratch file gives error scratch", async () => {
    const missing = join(dir, "missing.img");
    const r = await finish(start(["--scratch-file", missing], ["/bin/true"]));
    expect(r.status).toEqual([`error scratch: open ${missing}: No such file or directory`]);
    expect(r.code).toBe(127);
  });

  rootTest("bad arguments give error args and exit 125", async () => {
    const r = await finish(start(["--frobnicate"], ["/bin/true"]));
    expect(r.status).toEqual(["error args: unknown option --frobnicate"]);
    expect(r.code).toBe(125);
  });

  rootTest("the root and every submount are read-only", async () => {
    const sub = join(dir, "submount");
    mkdirSync(sub);
    sh(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "kiln-test", sub]);
    cleanups.push(() => sh(["umount", sub]));
    const r = await run([], `touch /usr/x; touch /etc/x; touch /x; touch ${sub}/x; cat /proc/self/mountinfo`);
    expect(r.stderr).toContain("touch: cannot touch '/usr/x'");
    expect(r.stderr).toContain("touch: cannot touch '/etc/x'");
    expect(r.stderr).toContain("touch: cannot touch '/x': Read-only file system");
    expect(r.stderr).toContain(`touch: cannot touch '${sub}/x': Read-only file system`);
    const rw = new Set(["/tmp", "/proc", "/dev/pts", "/dev/shm"]);
    for (const n of ["null", "zero", "full", "random", "urandom", "tty"]) rw.add(`/dev/${n}`);
    const mounts = r.stdout
      .trim()
      .split("\n")
      .map((l) => l.split(" "));
    expect(mounts.some((f) => f[4] === sub)).toBe(true);
    for (const f of mounts) if (!rw.has(f[4]!)) expect(`${f[4]} ${f[5]}`).toMatch(/ ro(,|$)/);
  });

  rootTest(
    "--root DIR: a template tree becomes the read-only root, proc/sys/dev/tmp/kiln are our own",
    async () => {
      const t = join(dir, "template");
      for (const d of ["usr", "etc", "w/sub", "tmp", "proc"]) mkdirSync(join(t, d), { recursive: true });
      chmodSync(join(t, "w"), 0o1777);
      for (const l of ["bin", "lib", "lib64", "sbin"]) symlinkSync(`usr/${l}`, join(t, l));
      writeFileSync(join(t, "etc/marker"), "from-template\n");
      writeFileSync(join(t, "tmp/not-scratch"), "");
      sh(["mount", "--bind", "/usr", join(t, "usr")]);
      cleanups.push(() => sh(["umount", join(t, "usr")]));
      sh(["mount", "-t", "tmpfs", "-o", "mode=1777,size=1m", "kiln-test", join(t, "w/sub")]);
      cleanups.push(() => sh(["umount", join(t, "w/sub")]));
      const r = await run(
        ["--root", t],
        "cat /etc/marker; ls -A /; ls -A /tmp; ls -A /sys | wc -l; touch /w/x /w/sub/x",
      );
      const [marker, ...rest] = r.stdout.trim().split("\n");
      expect(marker).toBe("from-template");
      const topLevel = "bin dev etc kiln lib lib64 proc sbin sys tmp usr w".split(" ");
      expect(rest.slice(0, topLevel.length)).toEqual(topLevel);
      expect(rest.slice(topLevel.length)).toEqual(["home", "out", "0"]);
      expect(r.stderr).toContain("cannot touch '/w/x': Read-only file system");
      expect(r.stderr).toContain("cannot touch '/w/sub/x': Read-only file system");
    },
  );

  rootTest("scratch file: /tmp is the ext4 image, full at its size, the host untouched", async () => {
    const img = makeImage("filled.img");
    const before = statSync(img);
    const r = await run(
      ["--scratch-file", img],
      "df -k /tmp | tail -1; stat -c %a /tmp; dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1; echo dd=$?",
    );
    const [df, mode] = r.stdout.split("\n");
    const kib = Number(df!.split(/\s+/)[1]);
    expect(kib).toBeGreaterThan(50 * 1024);
    expect(kib).toBeLessThanOrEqual(64 * 1024);
    expect(mode).toBe("1777");
    expect(r.stdout).toContain("No space left on device");
    expect(r.stdout).toContain("dd=1");
    expect(statSync(img).size).toBe(before.size);
    expect(statSync(img).blocks * 512).toBeLessThanOrEqual(64 * 1024 * 1024);
    expect(loopsOf(img)).toBe("");
  });

  rootTest("--scratch-dev mounts a block device at /tmp", async () => {
    const img = makeImage("device.img", 32);
    const dev = sh(["losetup", "--find", "--show", img]).trim();
    cleanups.push(() => sh(["losetup", "-d", dev]));
    const r = await run(["--scratch-dev", dev], "df -k /tmp | tail -1; stat -c '%U %a' /tmp/home");
    const kib = Number(r.stdout.split(/\s+/)[1]);
    expect(kib).toBeGreaterThan(24 * 1024);
    expect(kib).toBeLessThanOrEqual(32 * 1024);
    expect(r.stdout.split("\n")[1]).toMatch(/^\S+ 700$/);
  });

  rootTest(
    "--scratch-dev takes a loop device the caller attached to clear itself, mounts it nobarrier, and returns once it has cleared",
    async () => {
      const img = makeImage("ahead.img", 32);
      // As the worker does for the next job's volume: attached ahead with autoclear, held until "ready".
      const loop = attachLoop(img);
      let held = true;
      cleanups.push(() => {
        if (held) closeSync(loop.fd);
      });
      const s = start(["--scratch-dev", loop.device], ["/bin/sh", "-c", "grep ' /tmp ' /proc/self/mounts"]);
      await waitFor("the ready line", () => s.status().some((l) => l.startsWith("ready ")));
      closeSync(loop.fd);
      held = false;
      const r = await finish(s);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/ \/tmp ext4 \S*nobarrier/);
      // The launcher waited for the device to clear: the caller may delete the image at once.
      expect(loopBackedBy(loop.nr, img)).toBe(false);
      expect(r.status.some((l) => l.startsWith("warning"))).toBe(false);
    },
  );

  rootTest("--debug prints each step to stderr", async () => {
    const r = await finish(start(["--debug"], ["/bin/true"]));
    for (const step of [
      "cgroup",
      "unshare",
      "mount-root",
      "pivot_root",
      "scratch",
      "dev",
      "seccomp",
      "exec",
      "reap",
    ])
      expect(r.stderr).toMatch(new RegExp(`^kiln-sandbox\\[\\d+\\] [\\d.]+: ${step}$`, "m"));
    expect(r.code).toBe(0);
  });

  rootTest("scratch tmpfs of a given size, and the 64 MiB default", async () => {
    const sized = await run(
      ["--scratch-tmpfs", `${8 * 1024 * 1024}`],
      "df -k /tmp | tail -1; head -c 9M /dev/zero > /tmp/f",
    );
    expect(Number(sized.stdout.split(/\s+/)[1])).toBe(8192);
    expect(sized.stderr).toContain("No space left on device");
    const dflt = await run([], "df -k /tmp | tail -1");
    expect(Number(dflt.stdout.split(/\s+/)[1])).toBe(65536);
  });

  rootTest("HOME and /tmp/out exist and belong to the job user; --chdir", async () => {
    const r = await run([], "pwd; stat -c '%n %u %g %a' /tmp /tmp/home /tmp/out");
    expect(r.stdout.trim().split("\n")).toEqual([
      "/tmp/home",
      "/tmp 0 0 1777",
      `/tmp/home ${UID} ${GID} 700`,
      `/tmp/out ${UID} ${GID} 755`,
    ]);
    const c = await run(["--chdir", "/tmp/out"], "pwd");
    expect(c.stdout).toBe("/tmp/out\n");
  });

  rootTest("--mask hides a directory and a file, and ignores a missing path", async () => {
    const secretDir = join(dir, "secret-dir");
    mkdirSync(secretDir);
    writeFileSync(join(secretDir, "key"), "secret\n");
    writeFileSync(join(dir, "secret-file"), "secret\n");
    writeFileSync(join(dir, "visible-file"), "visible\n");
    const masks = ["--mask", secretDir, "--mask", join(dir, "secret-file"), "--mask", join(dir, "nope")];
    const r = await run(masks, `ls -A ${secretDir} | wc -l; cat ${dir}/secret-file; cat ${dir}/visible-file`);
    expect(r.stdout).toBe("0\nvisible\n");
    expect(r.code).toBe(0);
  });

  rootTest("/dev holds only the listed nodes (plus --dev)", async () => {
    const r = await run(
      ["--dev", "/dev/fuse"],
      "ls -A /dev; readlink /dev/ptmx; ls -A /dev/pts; echo hi > /dev/null && echo null-ok; stat -c %F /dev/zero /dev/fuse",
    );
    expect(r.stdout.trim().split("\n")).toEqual([
      ..."fd full fuse null ptmx pts random shm stderr stdin stdout tty urandom zero".split(" "),
      "pts/ptmx",
      "ptmx",
      "null-ok",
      "character special file",
      "character special file",
    ]);
  });

  rootTest("uid, gid and supplementary groups are as given", async () => {
    const r = await run(["--groups", "61001,61002"], "id -u; id -g; id -G; grep ^Groups /proc/self/status");
    expect(r.stdout).toBe(`${UID}\n${GID}\n${GID} 61001 61002\nGroups:\t61001 61002 \n`);
    const none = await run(["--groups", ""], "id -G");
    expect(none.stdout).toBe(`${GID}\n`);
  });

  rootTest("no capabilities, NoNewPrivs 1, Seccomp 2", async () => {
    const r = await run([], "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status");
    const fields = Object.fromEntries(
      r.stdout
        .trim()
        .split("\n")
        .map((l) => l.split(/:\s+/) as [string, string]),
    );
    for (const c of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"])
      expect(fields[c]).toBe("0000000000000000");
    expect(fields.NoNewPrivs).toBe("1");
    expect(fields.Seccomp).toBe("2");
  });

  rootTest(
    "seccomp refuses namespaces, mounts, keyrings and TIOCSTI; forks and threads still work",
    async () => {
      const names = [
        "unshare-user",
        "unshare-mnt",
        "clone-newuser",
        "clone-newnet",
        "clone3",
        "fork",
        "thread",
        "mount",
        "umount",
        "chroot",
        "pivot_root",
        "setns",
        "open_tree",
        "fsopen",
        "move_mount",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "name_to_handle_at",
        "personality-linux32",
        "personality-query",
        "tiocsti",
        "tiocsti-high-bits",
        "tiocgwinsz",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "fanotify_init",
        "syslog",
        "sysfs",
        "ustat",
        "userfaultfd-user",
      ];
      const r = await finish(start([], [probe, ...names]));
      const got = parseProbe(r.stdout);
      const ok = new Set(["fork", "thread", "personality-query", "tiocgwinsz"]);
      for (const n of names)
        expect(`${n}=${got[n]}`).toBe(`${n}=${ok.has(n) ? "ok" : n === "clone3" ? "ENOSYS" : "EPERM"}`);
      // util-linux as a user would try it
      const u = await run([], "unshare -U true; echo u=$?; unshare -m true; echo m=$?");
      expect(u.stdout).toBe("u=1\nm=1\n");
      expect(u.stderr).toContain("Operation not permitted");
    },
  );

  rootTest("the seccomp probes are meaningful: outside the sandbox the same user may do them", async () => {
    const names = [
      "tiocsti",
      "unshare-user",
      "io_uring_setup",
      "fanotify_init",
      "sysfs",
      "ustat",
      "userfaultfd-user",
    ];
    const p = Bun.spawn([probe, ...names], { uid: UID, gid: GID, stdout: "pipe" });
    const got = parseProbe(await new Response(p.stdout).text());
    expect(got.tiocsti).toBe("ok"); // dev.tty.legacy_tiocsti=1 here; EIO where it is 0, never EPERM
    for (const n of names.slice(1)) expect(`${n}=${got[n]}`).toBe(`${n}=ok`);
    // Without the filter these reach the kernel, which answers for their bad arguments, not with EPERM.
    const bad = Bun.spawn([probe, "io_uring_enter", "io_uring_register"], {
      uid: UID,
      gid: GID,
      stdout: "pipe",
    });
    const kernel = parseProbe(await new Response(bad.stdout).text());
    for (const n of ["io_uring_enter", "io_uring_register"]) expect(kernel[n]).toMatch(/^E(BADF|INVAL)$/);
  });

  rootTest(
    "PID 1 keeps only CAP_KILL once the job runs, and still signals it and reaps everything",
    async () => {
      const s = start([], ["/bin/sh", "-c", 'trap "exit 5" TERM; touch /tmp/out/armed; sleep 1000 & wait']);
      await waitFor("ready", () => s.status().length > 0);
      const fields = Object.fromEntries(
        readFileSync(`/proc/${readyPid(s.status())}/status`, "utf8")
          .split("\n")
          .filter((l) => /^(Cap|NoNewPrivs)/.test(l))
          .map((l) => l.split(/:\s+/) as [string, string]),
      );
      expect(fields).toEqual({
        CapInh: "0000000000000000",
        CapPrm: "0000000000000020",
        CapEff: "0000000000000020",
        CapBnd: "0000000000000020",
        CapAmb: "0000000000000000",
        NoNewPrivs: "1",
      });
      // The trap must be set before the signal comes, or the shell dies of it instead.
      await waitFor("the trap", () => existsSync(`/proc/${readyPid(s.status())}/root/tmp/out/armed`));
      s.proc.kill("SIGTERM");
      const r = await finish(s);
      expect(r.status.at(-1)).toBe("exit 5");
    },
  );

  rootTest("x32 system calls kill the process", async () => {
    const r = await finish(start([], [probe, "x32"]));
    expect(r.status.at(-1)).toBe("signal 31");
  });

  rootTest("network: only lo, and the host's loopback services are unreachable", async () => {
    const server = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const r = await run(
        [],
        `grep : /proc/net/dev | cut -d: -f1 | tr -d ' '; bash -c 'exec 3<>/dev/tcp/127.0.0.1/${server.port}' && echo connected || echo refused`,
      );
      expect(r.stdout).toBe("lo\nrefused\n");
    } finally {
      server.stop(true);
    }
  });

  rootTest("processes: own pid namespace, host processes invisible and unkillable", async () => {
    const r = await run([], `echo $$; ls /proc | grep -c '^[0-9]'; kill -0 ${process.pid}; echo kill=$?`);
    const [self, count, kill] = r.stdout.trim().split("\n");
    expect(self).toBe("2");
    expect(Number(count)).toBeLessThanOrEqual(4);
    expect(kill).toBe("kill=1");
    expect(r.stderr).toContain("No such process");
  });

  rootTest("hostname is the job's own", async () => {
    const before = hostname();
    const r = await run(["--hostname", "kiln-test-job"], "hostname; hostname evil 2>/dev/null; hostname");
    expect(r.stdout).toBe("kiln-test-job\nkiln-test-job\n");
    expect(hostname()).toBe(before);
    expect((await run([], "hostname")).stdout).toBe("kiln\n");
  });

  rootTest("nothing the job starts outlives it", async () => {
    const marker = `1000.${Date.now() % 100000}${Math.floor(Math.random() * 1000)}`;
    const r = await run(
      [],
      `setsid nohup sleep ${marker} >/dev/null 2>&1 & (sleep ${marker} &) ; sleep 0.1; echo started`,
    );
    expect(r.stdout).toBe("started\n");
    expect(r.status.at(-1)).toBe("exit 0");
    expect(sh(["pgrep", "-f", `sleep ${marker}`], { ok: false })).toBe("");
  });

  rootTest("--api carries HTTP from the job's loopback to a Unix socket on the host", async () => {
    const sock = join(dir, "api.sock");
    const server = Bun.serve({
      unix: sock,
      async fetch(req) {
        const body = await req.arrayBuffer();
        return new Response(`${req.method} ${new URL(req.url).pathname} ${body.byteLength}\n`);
      },
    });
    cleanups.push(() => server.stop(true));
    const script = [
      "curl -sS http://127.0.0.1:8123/hello",
      "head -c 3000000 /dev/urandom | curl -sS --data-binary @- http://127.0.0.1:8123/upload",
      "for i in $(seq 20); do curl -sS http://127.0.0.1:8123/n/$i > /tmp/c.$i & done; wait; cat /tmp/c.* | wc -l",
    ].join("; ");
    // Half-close: a peer that ends its answer as the job's API proxy does, with shutdown(SHUT_WR) while
    // it keeps its socket, must have that EOF passed on (a peer that closes outright before that is taken
    // as abandoned, and the job's client gets a reset instead: see the README).
    const rawSock = join(dir, "api-raw.sock");
    const raw = Bun.listen<{ got: string }>({
      unix: rawSock,
      socket: {
        open(so) {
          so.data = { got: "" };
        },
        data(so, chunk) {
          so.data.got += chunk.toString();
          if (!so.data.got.includes("\r\n\r\n")) return;
          const path = so.data.got.split(" ")[1];
          so.write(`HTTP/1.0 200 OK\r\n\r\nGET ${path} 0\n`);
          so.shutdown();
        },
      },
    });
    cleanups.push(() => raw.stop(true));
    const half =
      "bash -c 'exec 3<>/dev/tcp/127.0.0.1/8123; printf \"GET /raw HTTP/1.0\\r\\nHost: api\\r\\n\\r\\n\" >&3; cat <&3 | tail -1'";
    const r = await run(["--api", `8123:${sock}`], script);
    const h = await run(["--api", `8123:${rawSock}`], half);
    expect(r.stderr + h.stderr).toBe("");
    expect(r.stdout + h.stdout).toBe("GET /hello 0\nPOST /upload 3000000\n20\nGET /raw 0\n");
  });

  rootTest("--hold-fd keeps /tmp/out readable through /proc/PID/root until released", async () => {
    const s = start(["--scratch-file", image], ["/bin/sh", "-c", "echo artifact > /tmp/out/a.txt"], {
      hold: true,
    });
    await waitFor("exit line", () => s.status().includes("exit 0"));
    expect(await new Response(s.proc.stdout).text()).toBe(""); // the job's output ends with the job
    const pid = readyPid(s.status());
    expect(readFileSync(`/proc/${pid}/root/tmp/out/a.txt`, "utf8")).toBe("artifact\n");
    expect(loopsOf(image)).not.toBe("");
    await Bun.sleep(100);
    expect(s.proc.exitCode).toBeNull();
    closeSync(s.holdFd!);
    expect(await s.proc.exited).toBe(0);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(loopsOf(image)).toBe("");
  });

  rootTest(
    "a loop device still attached 5 s after the sandbox ended is reported, not waited on in silence",
    async () => {
      const img = makeImage("pinned.img");
      const s = start(["--scratch-file", img], ["/bin/true"], { hold: true });
      await waitFor("exit line", () => s.status().includes("exit 0"));
      // An fd on the job's mount namespace keeps it, and the scratch mount in it, alive after PID 1.
      const ns = openSync(`/proc/${readyPid(s.status())}/ns/mnt`, "r");
      try {
        closeSync(s.holdFd!);
        expect(await s.proc.exited).toBe(0);
        const loop = /^\/dev\/loop\d+/.exec(loopsOf(img))?.[0];
        expect(s.status().at(-1)).toBe(
          `warning loop: ${loop} still holds ${img} 5 s after the sandbox ended`,
        );
      } finally {
        closeSync(ns);
      }
      await waitFor("the loop device to go", () => loopsOf(img) === "" || undefined);
    },
    20_000,
  );

  rootTest("the scratch loop device is gone and no mount is left on the host after a job", async () => {
    const mounts = hostMounts();
    const loops = hostLoops();
    const img = makeImage("second.img");
    const bin = join(dir, "kiln-script");
    writeFileSync(bin, "#!/bin/sh\necho kiln-ok\n", { mode: 0o755 });
    const r = await run(
      ["--scratch-file", img, "--kiln-bin", bin, "--mask", "/etc/hostname", "--dev", "/dev/fuse"],
      "/kiln/bin/kiln",
    );
    expect(r.stdout).toBe("kiln-ok\n");
    expect(loopsOf(img)).toBe("");
    expect(hostLoops()).toBe(loops);
    expect(hostMounts()).toBe(mounts);
  });

  rootTest("--ro-bind and --bind: extra binds, created at the top level", async () => {
    const ro = join(dir, "ro-src");
    const rw = join(dir, "rw-src");
    mkdirSync(ro);
    mkdirSync(rw);
    chmodSync(rw, 0o777);
    writeFileSync(join(ro, "f"), "ro-content\n");
    const r = await run(
      ["--ro-bind", `${ro}:/data-ro`, "--bind", `${rw}:/data-rw`],
      "cat /data-ro/f; touch /data-ro/x; echo hi > /data-rw/y",
    );
    expect(r.stdout).toBe("ro-content\n");
    expect(r.stderr).toContain("Read-only file system");
    expect(readFileSync(join(rw, "y"), "utf8")).toBe("hi\n");
    const bad = await finish(start(["--bind", `${rw}:/usr/no/such/dir`], ["/bin/true"]));
    expect(bad.status).toEqual(["error bind: /usr/no/such/dir: No such file or directory"]);
  });

  rootTest("--kiln-bin is bound read-only at /kiln/bin/kiln", async () => {
    const bin = join(dir, "kiln-bin");
    writeFileSync(bin, '#!/bin/sh\necho kiln "$@"\n', { mode: 0o755 });
    const r = await run(["--kiln-bin", bin], "/kiln/bin/kiln job progress 50; ls -A /kiln");
    expect(r.stdout).toBe("kiln job progress 50\nbin\n");
  });

  rootTest("--cgroup: every process of the job is born in the given cgroups", async () => {
    const name = `kiln-test-${process.pid}-${Date.now()}`;
    const cgs = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"]
      .filter((c) => existsSync(c))
      .map((c) => join(c, name));
    for (const cg of cgs) mkdirSync(cg);
    cleanups.push(() => {
      for (const cg of cgs) if (existsSync(cg)) sh(["rmdir", cg]);
    });
    const s = start(
      cgs.flatMap((cg) => ["--cgroup", join(cg, "cgroup.procs")]),
      ["/bin/sh", "-c", "grep pids /proc/self/cgroup; sleep 0.3"],
    );
    await waitFor("ready", () => s.status().length > 0);
    const pid1 = readyPid(s.status());
    for (const cg of cgs) {
      const procs = readFileSync(join(cg, "cgroup.procs"), "utf8").trim().split("\n").map(Number);
      expect(procs).toContain(pid1);
      expect(procs).toContain(s.proc.pid);
      expect(procs.length).toBeGreaterThanOrEqual(3);
    }
    const r = await finish(s);
    expect(r.stdout).toMatch(/^\d+:pids:\/$/m); // the cgroup namespace hides the host path
    for (const cg of cgs) expect(readFileSync(join(cg, "cgroup.procs"), "utf8")).toBe("");
  });

  rootTest(
    "--templates: /kiln/templates is a small tmpfs only root can write, the rest of /kiln is read-only",
    async () => {
      const r = await run(
        ["--templates"],
        "ls -A /kiln; stat -c '%u %g %a' /kiln/templates; grep ' /kiln/templates ' /proc/self/mountinfo; " +
          "mkdir /kiln/templates/x; touch /kiln/templates/x /kiln/x",
      );
      const [ls, owner, mount] = r.stdout.trim().split("\n");
      expect(ls).toBe("templates");
      expect(owner).toBe("0 0 755");
      expect(mount).toMatch(
        / \/kiln\/templates rw,nosuid,nodev[, ].* - tmpfs kiln-templates rw,size=64k,mode=755$/,
      );
      expect(r.stderr).toContain("mkdir: cannot create directory '/kiln/templates/x': Permission denied");
      expect(r.stderr).toContain("touch: cannot touch '/kiln/templates/x': Permission denied");
      expect(r.stderr).toContain("touch: cannot touch '/kiln/x': Read-only file system");
      expect((await run([], "ls -A /kiln | wc -l")).stdout).toBe("0\n");
    },
  );

  rootTest(
    "--overlay-root: / is DIR overlaid on the scratch, writable, full at the scratch's size; DIR untouched",
    async () => {
      const t = makeMiniRoot("overlay-root");
      const before = treeState(t);
      const img = makeImage("overlay.img");
      const script = [
        "id -u; cat /etc/marker; echo hi > /opt/writable/x && cat /opt/writable/x",
        "touch /x", // root-owned: denied, but not read-only
        "stat -c '%n %a %u' / /tmp /tmp/home; ls -A /; ls -A /tmp; ls -A /kiln; touch /kiln/x; ls -A /sys | wc -l",
        "grep -E '^([^ ]+ ){4}(/|/tmp) ' /proc/self/mountinfo | cut -d' ' -f5,6,8",
        "df -k / | tail -1",
        "dd if=/dev/zero of=/opt/writable/big bs=1M count=100 2>&1 | grep -o 'No space left on device'",
      ].join("; ");
      const r = await run(["--root", t, "--overlay-root", "--scratch-file", img, "--templates"], script);
      const lines = r.stdout.trim().split("\n");
      const expected = [
        `${UID}`,
        "from-template",
        "hi",
        "/ 755 0",
        "/tmp 1777 0",
        `/tmp/home 700 ${UID}`,
        "bin dev etc kiln lib lib64 opt proc sys tmp usr".split(" ").join("\n"),
        "home\nout",
        "templates",
        "0",
        "/ rw,nosuid,nodev,relatime overlay",
        "/tmp rw,nosuid,nodev,relatime ext4",
      ]
        .join("\n")
        .split("\n");
      expect(lines.slice(0, expected.length)).toEqual(expected);
      const kib = Number(lines[expected.length]!.split(/\s+/)[1]);
      expect(kib).toBeGreaterThan(50 * 1024);
      expect(kib).toBeLessThanOrEqual(64 * 1024);
      expect(lines.slice(expected.length + 1)).toEqual(["No space left on device"]);
      expect(r.stderr).toContain("touch: cannot touch '/x': Permission denied");
      expect(r.stderr).toContain("touch: cannot touch '/kiln/x': Read-only file system");
      expect(r.status.at(-1)).toBe("exit 0");
      expect(treeState(t)).toBe(before);
      expect(loopsOf(img)).toBe("");

      // the same tree as a plain --root is read-only
      const plain = await run(["--root", t], "touch /opt/writable/x");
      expect(plain.stderr).toContain("touch: cannot touch '/opt/writable/x': Read-only file system");
      // the default tmpfs scratch works as well, and limits / the same way
      const tmpfs = await run(
        ["--root", t, "--overlay-root", "--scratch-tmpfs", `${4 << 20}`],
        "df -k / | tail -1; head -c 5M /dev/zero > /opt/writable/f",
      );
      expect(Number(tmpfs.stdout.split(/\s+/)[1])).toBe(4096);
      expect(tmpfs.stderr).toContain("No space left on device");
      expect(treeState(t)).toBe(before);
      // a used scratch would carry the last job's root along: refused
      const reused = await finish(
        start(["--root", t, "--overlay-root", "--scratch-file", img], ["/bin/true"]),
      );
      expect(reused.status).toEqual([
        "error scratch: --overlay-root needs a fresh scratch: mkdir /tmp/kiln-scratch/upper: File exists",
      ]);
      expect(loopsOf(img)).toBe("");
      const noRoot = await finish(start(["--overlay-root"], ["/bin/true"]));
      expect(noRoot.status).toEqual(["error args: --overlay-root needs --root DIR"]);
    },
  );

  for (const overlay of [false, true])
    rootTest(
      `--inject attaches a host dir read-only in a running sandbox${overlay ? " (--overlay-root)" : ""}`,
      async () => {
        const src = join(dir, `inject-src-${overlay}`);
        mkdirSync(src);
        writeFileSync(join(src, "marker"), "injected\n");
        // a shared mount on the host: the copy in the job must not stay in its peer group
        sh(["mount", "--bind", src, src]);
        sh(["mount", "--make-shared", src]);
        cleanups.push(() => sh(["umount", src]));
        const mounts = hostMounts();
        const root = overlay ? ["--root", makeMiniRoot("inject-root"), "--overlay-root"] : [];
        const wait = (n: string) => `while [ ! -e /kiln/templates/${n}/marker ]; do sleep 0.05; done`;
        const script = [
          "mkdir /kiln/templates/evil 2>&1",
          wait("t1"),
          "cat /kiln/templates/t1/marker",
          "touch /kiln/templates/t1/x 2>&1 || true",
          wait("t2"),
          "grep ' /kiln/templates/' /proc/self/mountinfo | cut -d' ' -f5-",
        ].join("; ");
        const s = start(["--templates", ...root], ["/bin/sh", "-c", script]);
        await waitFor("ready", () => s.status().length > 0);
        const pid = readyPid(s.status());
        const inject = (p: number, bind: string) => {
          const r = Bun.spawnSync([helper, "--inject", `${p}`, "--ro-bind", bind], {
            stdout: "pipe",
            stderr: "pipe",
          });
          return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
        };
        for (const dst of [
          "/etc/evil",
          "/kiln/templates/../etc",
          "/kiln/templates/a/b",
          "/kiln/templates/",
          "/kiln/x",
        ])
          expect(inject(pid, `${src}:${dst}`)).toEqual({
            code: 1,
            stdout: "",
            stderr: `error args: --inject wants PID and --ro-bind SRC:/kiln/templates/NAME, got ${dst}\n`,
          });
        expect(inject(process.pid, `${src}:/kiln/templates/t1`).stderr).toBe(
          `error target: pid ${process.pid} is not the init of a sandbox\n`,
        );
        expect(inject(1, `${src}:/kiln/templates/t1`).code).toBe(1);
        expect(inject(pid, `${join(dir, "nope")}:/kiln/templates/t1`).stderr).toBe(
          `error open_tree: ${join(dir, "nope")}: No such file or directory\n`,
        );
        expect(inject(pid, `${src}:/kiln/templates/t1`)).toEqual({ code: 0, stdout: "ok\n", stderr: "" });
        expect(inject(pid, `${src}:/kiln/templates/t1`).stderr).toBe(
          "error mkdir: /kiln/templates/t1: File exists\n",
        );
        expect(inject(pid, `${src}:/kiln/templates/t2`).stdout).toBe("ok\n");
        const r = await finish(s);
        const lines = r.stdout.trim().split("\n");
        expect(lines.slice(0, 3)).toEqual([
          "mkdir: cannot create directory '/kiln/templates/evil': Permission denied",
          "injected",
          "touch: cannot touch '/kiln/templates/t1/x': Read-only file system",
        ]);
        expect(lines.slice(3).map((l) => l.split(" ").slice(0, 2).join(" "))).toEqual([
          "/kiln/templates/t1 ro,nosuid,nodev,relatime",
          "/kiln/templates/t2 ro,nosuid,nodev,relatime",
        ]);
        for (const l of lines.slice(3)) expect(l).not.toContain("shared:");
        expect(hostMounts()).toMatch(new RegExp(` ${src} .* shared:`)); // so the check above means something
        expect(r.status.at(-1)).toBe("exit 0");
        expect(existsSync(join(src, "x"))).toBe(false);
        expect(hostMounts()).toBe(mounts);
      },
    );

  rootTest("--inject refuses a sandbox started without --templates", async () => {
    const s = start([], ["/bin/sleep", "1000"]);
    await waitFor("ready", () => s.status().length > 0);
    const pid = readyPid(s.status());
    const r = Bun.spawnSync([helper, "--inject", `${pid}`, "--ro-bind", `${dir}:/kiln/templates/t1`], {
      stderr: "pipe",
    });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toBe(
      `error target: pid ${pid}: /kiln/templates (no --templates?): No such file or directory\n`,
    );
    s.proc.kill("SIGTERM");
    expect((await finish(s)).status.at(-1)).toBe("signal 15");
  });

  rootTest("the suite leaves host mounts and loop devices as it found them", () => {
    expect(hostMounts()).toBe(mountsAtStart);
    expect(hostLoops()).toBe(loopsAtStart);
  });
});

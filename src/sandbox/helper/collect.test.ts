/**
 * Tests of `kiln-sandbox --collect` (collect.c): a real sandbox leaves things in /tmp/out, held open
 * with --hold-fd, and the collector copies them to the host. Every attack a job can make on collection
 * is tried here with the real helper, as root; the same attacks run end to end in the escape suite
 * (test/integration/sandbox.test.ts).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";

const isRoot = process.getuid?.() === 0;
const REPO = resolve(import.meta.dir, "../../..");
const UID = 61010;
const rootTest = test.skipIf(!isRoot);
if (!isRoot) console.warn("kiln-sandbox --collect tests skipped: they need root (namespaces, mounts)");

let dir = "";
let helper = "";
let seq = 0;

function sh(cmd: string[]): string {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${r.stderr.toString()}`);
  return r.stdout.toString();
}

async function until(what: string, fn: () => boolean, ms = 5000) {
  for (const end = Date.now() + ms; Date.now() < end; await Bun.sleep(10)) if (fn()) return;
  throw new Error(`timed out waiting for ${what}`);
}

/** A sandbox running `script`, held after it ends until release(); resolves once the script is done. */
async function held(script: string, args: string[] = [], o: { waitExit?: boolean } = {}) {
  const statusPath = join(dir, `status-${++seq}`);
  const statusFd = openSync(statusPath, "w");
  const argv = [helper, "--uid", `${UID}`, "--gid", `${UID}`, "--status-fd", "3", "--hold-fd", "4", ...args];
  const proc = Bun.spawn([...argv, "--", "/bin/sh", "-c", script], {
    // biome-ignore lint/suspicious/noExplicitAny: Bun's stdio typing does not cover extra fds
    stdio: ["ignore", "ignore", "ignore", statusFd, "pipe"] as any,
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin" },
  });
  closeSync(statusFd);
  const status = () => readFileSync(statusPath, "utf8");
  await until("the job", () => (o.waitExit === false ? /^ready /m : /^exit /m).test(status()));
  const pid = Number(/^ready (\d+)/m.exec(status())![1]);
  return {
    pid,
    async release() {
      closeSync(proc.stdio[4] as unknown as number);
      if (o.waitExit === false) proc.kill("SIGKILL");
      await proc.exited;
    },
  };
}

function collect(pid: number, to: string, budget = 1 << 30, uid = UID) {
  const r = Bun.spawnSync(
    [
      helper,
      "--collect",
      `${pid}`,
      "--to",
      to,
      "--uid",
      `${uid}`,
      "--gid",
      `${uid}`,
      "--budget",
      `${budget}`,
    ],
    { stdout: "pipe", stderr: "pipe" },
  );
  return {
    code: r.exitCode,
    lines: r.stdout.toString().trim().split("\n").filter(Boolean),
    stderr: r.stderr.toString(),
  };
}

/** Every file below `root` as "path size", sorted. */
const tree = (root: string): string[] =>
  existsSync(root)
    ? (readdirSync(root, { recursive: true }) as string[])
        .map((p) => join(root, p))
        .filter((p) => sh(["stat", "-c", "%F", p]).startsWith("regular"))
        .map((p) => `${p.slice(root.length + 1)} ${readFileSync(p).length}`)
        .sort()
    : [];

describe("kiln-sandbox --collect", () => {
  beforeAll(() => {
    if (!isRoot) return;
    dir = mkdtempSync("/var/tmp/kiln-collect-test-");
    chmodSync(dir, 0o755);
    helper = join(dir, "kiln-sandbox");
    sh([join(REPO, "scripts/build-helper"), helper]);
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  rootTest(
    "regular files and subdirectories are copied; links, fifos, sockets, devices, bad names and unreadable files are skipped with a reason",
    async () => {
      // A device node cannot be made by the job (no capability, nodev scratch): plant it in the image.
      const img = join(dir, "planted.img");
      sh(["truncate", "-s", "16M", img]);
      sh(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", img]);
      const mnt = join(dir, "mnt");
      mkdirSync(mnt);
      sh(["mount", "-o", "loop", img, mnt]);
      mkdirSync(join(mnt, "out"));
      sh(["mknod", join(mnt, "out", "null"), "c", "1", "3"]);
      sh(["umount", mnt]);
      const script = [
        "cd /tmp/out",
        "echo hi > a.txt",
        "mkdir -p d/e && echo deep > d/e/f.txt && mkdir empty",
        "ln -s /etc/shadow shadow; ln -s /etc d/etc; ln -s a.txt alias",
        "mkfifo fifo",
        `python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')"`,
        `touch "$(printf 'bad\\nname')" .hidden 'sp ace'`,
        "echo secret > mine && chmod 000 mine",
      ].join("; ");
      const job = await held(script, ["--scratch-file", img]);
      const to = join(dir, "out-kinds");
      const r = collect(job.pid, to);
      await job.release();
      expect(r.code).toBe(0);
      const bad = "a name Kiln does not allow (letters, digits and . _ + -, not first)";
      expect(r.lines).toEqual([
        `skip .hidden ${bad}`,
        "file a.txt 3",
        "skip alias a symbolic link",
        `skip bad\\x0aname ${bad}`,
        "file d/e/f.txt 5",
        "skip d/etc a symbolic link",
        "skip fifo a fifo",
        "skip mine not readable by the job",
        "skip null a device node",
        "skip shadow a symbolic link",
        "skip sock a socket",
        `skip sp\\x20ace ${bad}`,
      ]);
      expect(tree(to)).toEqual(["a.txt 3", "d/e/f.txt 5"]);
      expect(existsSync(join(to, "empty"))).toBe(true);
      expect(
        sh(["stat", "-c", "%U %a", to, join(to, "a.txt")])
          .trim()
          .split("\n"),
        // The job's permission bits (umask 022: 644) travel with the file, which stays root's.
      ).toEqual(["root 700", "root 644"]);
    },
  );

  rootTest("$KILN_OUT swapped for a symlink to / or to a fifo yields nothing and says so", async () => {
    for (const [script, why] of [
      ["rmdir /tmp/out && ln -s / /tmp/out", "a symbolic link"],
      ["rmdir /tmp/out && mkfifo /tmp/out", "a fifo"],
    ] as const) {
      const job = await held(script);
      const to = join(dir, `out-top-${seq}`);
      const r = collect(job.pid, to);
      await job.release();
      expect(r).toEqual({ code: 0, lines: [`skip . ${why}`], stderr: "" });
      expect(readdirSync(to)).toEqual([]);
    }
    const gone = await held("rmdir /tmp/out");
    const r = collect(gone.pid, join(dir, "out-gone"));
    await gone.release();
    expect(r).toEqual({ code: 0, lines: [], stderr: "" });
  });

  rootTest(
    "the budget is counted before a byte is written: the file that passes it is named and nothing after it is copied",
    async () => {
      const job = await held(
        "cd /tmp/out; head -c 3000 /dev/zero > a; head -c 5000 /dev/zero > b; echo c > c",
      );
      const to = join(dir, "out-budget");
      const r = collect(job.pid, to, 7000);
      const exact = collect(job.pid, join(dir, "out-exact"), 8002);
      await job.release();
      expect(r.lines).toEqual(["file a 3000", "over b 5000"]);
      expect(tree(to)).toEqual(["a 3000"]);
      expect(exact.lines).toEqual(["file a 3000", "file b 5000", "file c 2"]);
    },
  );

  rootTest(
    "past 100000 entries collection stops and says so: a flood of files costs a bounded amount",
    async () => {
      // Hidden names are skipped without a copy, which keeps this cheap; they count all the same.
      const job = await held("cd /tmp/out; echo kept > a.txt; seq -f '.%06g' 1 100000 | xargs touch", [
        "--scratch-tmpfs",
        `${256 << 20}`,
      ]);
      const to = join(dir, "out-flood");
      const r = collect(job.pid, to);
      await job.release();
      expect(r.lines.length).toBe(100001);
      expect(r.lines.at(-1)).toBe(
        "skip a.txt one entry too many: $KILN_OUT holds more than 100000; this and the rest are not collected",
      );
      expect(readdirSync(to)).toEqual([]);
    },
    60_000,
  );

  rootTest(
    "a file already in the destination (an upload of the same name) is kept, not overwritten",
    async () => {
      const to = join(dir, "out-exists");
      mkdirSync(to);
      writeFileSync(join(to, "a.txt"), "uploaded\n");
      const job = await held("echo collected > /tmp/out/a.txt; echo b > /tmp/out/b.txt");
      const r = collect(job.pid, to);
      await job.release();
      expect(r.lines).toEqual(["skip a.txt a file of that name was uploaded already", "file b.txt 2"]);
      expect(readFileSync(join(to, "a.txt"), "utf8")).toBe("uploaded\n");
    },
  );

  rootTest(
    "a directory swapped for a symlink to /etc while collection runs never yields a host file",
    async () => {
      const swap =
        "cd /tmp/out; mkdir d; echo in > d/f.txt; while :; do mv d d2; ln -s /etc d; rm d; mv d2 d; done";
      const job = await held(swap, [], { waitExit: false });
      const seen = new Set<string>();
      try {
        for (let i = 0; i < 40; i++) {
          const to = join(dir, `out-race-${i}`);
          const r = collect(job.pid, to);
          expect(r.code).toBe(0);
          for (const line of r.lines) seen.add(line.replace(/ \d+$/, ""));
          for (const f of tree(to)) expect(f).toMatch(/^d2?\/f\.txt 3$/);
        }
      } finally {
        await job.release();
      }
      // Only the real file, the link, or "changed" ever show up; which of them depends on the timing.
      for (const s of seen)
        expect(s).toMatch(
          /^(file d2?\/f\.txt|skip d2? (a symbolic link|changed during collection|No such file or directory))$/,
        );
      // Both sides of the race were met, so the loop above tried what it means to.
      expect([...seen].some((s) => s.startsWith("file "))).toBe(true);
      expect([...seen].some((s) => s.startsWith("skip "))).toBe(true);
    },
  );

  rootTest("bad arguments and a pid that is gone are errors with exit 1", async () => {
    const noArgs = Bun.spawnSync([helper, "--collect", "1"], { stderr: "pipe" });
    expect(noArgs.exitCode).toBe(1);
    expect(noArgs.stderr.toString()).toStartWith("error args: usage: kiln-sandbox --collect PID");
    const r = collect(2 ** 22 + 7, join(dir, "out-nopid"));
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`error target: /proc/${2 ** 22 + 7}/root: No such file or directory\n`);
    const root = Bun.spawnSync(
      [helper, "--collect", "1", "--to", join(dir, "x"), "--uid", "0", "--gid", "0", "--budget", "1"],
      { stderr: "pipe" },
    );
    expect(root.exitCode).toBe(1);
  });
});

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  kiln,
  type Master,
  type Role,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * The sandbox tier against the compiled binary: `kiln up` with the sandbox runner, real jobs that try to
 * get out, and a check that the host is left exactly as it was. Needs root; skips and says so otherwise.
 */

const root = process.getuid?.() === 0;
if (!root) console.error("sandbox tests skipped: they need root (namespaces, cgroups, loop devices)");

// Outside /tmp on purpose: the job's /tmp is its scratch, so only a dir elsewhere tests the masking.
const dir = tempDir("kiln-sandbox-test-", "/var/tmp");
const suid = join(dir.path, "suid-id");
let m: Master;
let log: (id: number) => Promise<string>;

const snapshot = () => ({
  mounts: readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" ").slice(3, 5).join(" "))
    .sort(),
  loops: Bun.spawnSync(["losetup", "-a"])
    .stdout.toString()
    .split("\n")
    .filter((l) => l.includes(dir.path)),
  cgroups: readdirSync("/sys/fs/cgroup/pids").filter((d) => d === "kiln"),
});
let before: ReturnType<typeof snapshot>;

beforeAll(async () => {
  if (!root) return;
  before = snapshot();
  copyFileSync("/usr/bin/id", suid);
  chmodSync(suid, 0o4755);
  mkdirSync("/etc/kiln-test-secret", { recursive: true });
  writeFileSync("/etc/kiln-test-secret/key", "secret\n");
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: {
      KILN_WORKER_CAPACITY: "4",
      KILN_WORKER_NAME: "sbx",
      KILN_SANDBOX_MASK: "/etc/kiln-test-secret",
      KILN_WORKER_ARTIFACT_BUDGET: BUDGET,
    },
  });
  log = async (id) => (await m.cli(["logs", String(id)])).stdout;
  // As if an operator had opened the data dir up: the mask, not file modes, must keep jobs out.
  chmodSync(dir.path, 0o755);
  chmodSync(m.data, 0o755);
  chmodSync(join(m.data, "admin.token"), 0o644);
});

afterAll(async () => {
  if (!root) return;
  await m.kill("SIGTERM");
  await stopAll();
  rmSync("/etc/kiln-test-secret", { recursive: true, force: true });
  const after = snapshot();
  dir[Symbol.dispose]();
  expect(after).toEqual(before);
});

const sh = (script: string, extra: Record<string, unknown> = {}) =>
  submitJob(m, { command: ["/bin/bash", "-c", script], ...extra });

/** What an escape case expects besides its log: how the job ends, and which artifacts the master keeps. */
interface Expect {
  state?: [string, string | null];
  /** The exact artifact names kept, or a pattern every kept name must match. */
  artifacts?: string[] | RegExp;
}

// The worker's artifact budget (worker.artifact_budget): small, so the cases that pass it stay cheap.
const BUDGET = "8M";

/**
 * Each case is a real job that tries something; it must print BLOCKED with the error that blocked it.
 * `perl -e 'syscall(NR, ...)'` prints the errno of a raw system call (x86_64 numbers). For the artifact
 * cases, the line that matters is the one the worker adds to the job's log when it does not collect
 * something, and what the master ends up keeping.
 */
const ESCAPES: [string, string, RegExp, Expect?][] = [
  ["write the root", "touch /usr/kiln-escape 2>&1", /Read-only file system/],
  ["write /etc", "echo x 2>&1 > /etc/kiln-escape", /Read-only file system|Permission denied/],
  ["read the master's data dir and admin token", "ls -A DATA; cat DATA/admin.token 2>&1", /No such file/],
  ["read the worker's outbox and keys", "ls -A DATA/worker 2>&1", /No such file/],
  [
    "read a masked config dir",
    "ls -A /etc/kiln-test-secret; cat /etc/kiln-test-secret/key 2>&1",
    /No such file/,
  ],
  [
    "see host processes",
    "test -e /proc/HOSTPID && echo visible; ls /proc | grep -c '^[0-9]' | awk '$1 < 10 {print \"few\"}'",
    /^few$/m,
  ],
  ["signal a host process", "kill -0 HOSTPID 2>&1", /No such process/],
  [
    "reach a TCP service on the host's loopback",
    "echo hi 2>&1 > /dev/tcp/127.0.0.1/TCPPORT",
    /Connection refused/,
  ],
  ["reach the outside network", "echo hi 2>&1 > /dev/tcp/192.0.2.1/80", /Network is unreachable/],
  [
    "reach an upstream not allowed by --egress",
    "exec 3<>/dev/tcp/127.0.0.1/7070; printf 'CONNECT deb.debian.org:443 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3; head -1 <&3",
    /403 Forbidden/,
  ],
  [
    "reach an abstract Unix socket of the host",
    "python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect(b'\\0kiln-test-abstract')\" 2>&1",
    /ConnectionRefusedError|No such file/,
  ],
  [
    "mount a filesystem",
    "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>&1",
    /permission denied|Operation not permitted|must be superuser/i,
  ],
  ["chroot", "chroot / true 2>&1", /Operation not permitted/],
  ["create a user namespace", "unshare -U true 2>&1", /Operation not permitted/],
  ["create a mount namespace", "unshare -m true 2>&1", /Operation not permitted/],
  ["gain root through a setuid binary", "SUID -u", /^1[0-9]{9}$/m],
  [
    "open a host block device",
    "head -c1 /dev/vda 2>&1; head -c1 /dev/sda 2>&1; ls /dev | tr '\\n' ' '",
    /No such file/,
  ],
  ["mknod a block device", "mknod /tmp/sda b 8 0 2>&1", /Operation not permitted/],
  [
    "escape the cgroup through cgroup.procs",
    "echo $$ 2>&1 > /sys/fs/cgroup/pids/cgroup.procs; cat /proc/self/cgroup",
    /No such file/,
  ],
  [
    "TIOCSTI into a terminal",
    // A pty of its own made its controlling terminal: without the filter TIOCSTI would succeed here.
    "python3 -c \"import os,fcntl,termios; m,s=os.openpty(); os.setsid(); fcntl.ioctl(s, termios.TIOCSCTTY, 0); fcntl.ioctl(s, termios.TIOCSTI, b'x'); print('ESCAPED')\" 2>&1",
    /Operation not permitted/,
  ],
  [
    "use keyctl",
    "perl -e 'syscall(250, 0, 0, 0, 0, 0) == -1 and print \"$!\\n\"'",
    /Operation not permitted/,
  ],
  ["use bpf", "perl -e 'syscall(321, 0, 0, 0) == -1 and print \"$!\\n\"'", /Operation not permitted/],
  [
    "use perf_event_open",
    "perl -e 'syscall(298, 0, 0, -1, -1, 0) == -1 and print \"$!\\n\"'",
    /Operation not permitted/,
  ],
  ["change the hostname the host sees", "hostname hacked 2>&1", /Operation not permitted|must be root/],
  ["write /proc/sys", "echo 1 2>&1 > /proc/sys/vm/swappiness", /Read-only file system|Permission denied/],
  ["write /sys", "touch /sys/kiln 2>&1", /Read-only file system|Permission denied/],
  [
    "keep any capability",
    "grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; grep NoNewPrivs /proc/self/status",
    /CapBnd:\s+0{16}[\s\S]*NoNewPrivs:\s+1/,
  ],
  // PID 1 relays the job's API bytes: it must not hold what a bug in the relay would hand over.
  [
    "find capabilities beyond CAP_KILL in its PID 1",
    "grep -E '^Cap(Eff|Prm|Bnd)' /proc/1/status",
    /CapEff:\s+0{14}20\n/,
  ],
  // The seccomp filter, one case per denied family (see src/sandbox/helper/README.md, Seccomp).
  ...(
    [
      ["io_uring_setup", `425, 1, "\\0" x 120`],
      ["io_uring_enter", "426, 0, 0, 0, 0, 0, 0"],
      ["io_uring_register", "427, 0, 0, 0, 0"],
      ["userfaultfd in user mode", "323, 1"],
      ["add_key", `248, "user", "k", "x", 1, -2`],
      ["request_key", `249, "user", "k", 0, 0`],
      ["name_to_handle_at", `303, -100, "/", "\\0" x 136, "\\0" x 8, 0`],
      ["open_tree", `428, -100, "/tmp", 0`],
      ["setns", "308, 0, 0"],
      ["pivot_root", `155, "/tmp", "/tmp"`],
      ["fsopen", `430, "tmpfs", 0`],
      ["a 32-bit personality", "135, 8"],
      ["fanotify_init", "300, 0x200, 0"],
      ["syslog to read the kernel log's size", "103, 10, 0, 0"],
      ["kexec_load", "246, 0, 0, 0, 0"],
      ["finit_module", `313, 0, "", 0`],
      ["reboot", "169, 0, 0, 0, 0"],
      ["swapon", `167, "/tmp", 0`],
      ["acct", "163, 0"],
      ["settimeofday", "164, 0, 0"],
      ["iopl", "172, 3"],
      ["ustat", `136, 0, "\\0" x 32`],
    ] as const
  ).map(([name, args]): [string, string, RegExp] => [
    `use ${name}`,
    // Strings go through an array: perl passes a pointer to each, and a literal's buffer is read-only.
    `perl -e '@a = (${args.replace(/^\d+,? ?/, "")}); syscall(${args.split(",")[0]}, @a) == -1 and print "$!\\n"'`,
    /Operation not permitted/,
  ]),
  [
    "use clone3, whose flags the filter cannot read",
    `perl -e 'syscall(435, 0, 0) == -1 and print "$!\\n"'`,
    /Function not implemented/,
  ],
  // Artifacts: what the job leaves in $KILN_OUT is collected without following any path it controls.
  [
    "collect /etc through $KILN_OUT swapped for a symlink",
    "rmdir $KILN_OUT && ln -s /etc $KILN_OUT",
    /not collected: \$KILN_OUT: a symbolic link/,
    { artifacts: [] },
  ],
  [
    "collect /etc/shadow through a symlink in $KILN_OUT",
    "ln -s /etc/shadow $KILN_OUT/shadow; echo kept > $KILN_OUT/kept.txt",
    /not collected: \$KILN_OUT\/shadow: a symbolic link/,
    { artifacts: ["kept.txt"] },
  ],
  [
    "collect the data dir through $KILN_OUT swapped for a symlink",
    "rmdir $KILN_OUT && ln -s DATA $KILN_OUT",
    /not collected: \$KILN_OUT: a symbolic link/,
    { artifacts: [] },
  ],
  [
    "collect the admin token and database through symlinks in $KILN_OUT",
    "ln -s DATA/admin.token $KILN_OUT/token; ln -s DATA/kiln.db $KILN_OUT/db",
    /not collected: \$KILN_OUT\/db: a symbolic link[\s\S]*not collected: \$KILN_OUT\/token: a symbolic link/,
    { artifacts: [] },
  ],
  [
    "collect /etc through a symlinked subdirectory, while a real one is kept",
    "mkdir $KILN_OUT/d; echo in > $KILN_OUT/d/f.txt; ln -s /etc $KILN_OUT/d/etc",
    /not collected: \$KILN_OUT\/d\/etc: a symbolic link/,
    { artifacts: ["d/f.txt"] },
  ],
  [
    "collect a host file hard-linked into $KILN_OUT",
    "ln /etc/passwd $KILN_OUT/passwd 2>&1",
    /Invalid cross-device link/,
    { artifacts: [] },
  ],
  [
    "block collection with a fifo in $KILN_OUT",
    "mkfifo $KILN_OUT/fifo; echo kept > $KILN_OUT/kept.txt",
    /not collected: \$KILN_OUT\/fifo: a fifo/,
    { artifacts: ["kept.txt"] },
  ],
  [
    "leave a socket in $KILN_OUT",
    `python3 -c "import socket,os; socket.socket(socket.AF_UNIX).bind(os.environ['KILN_OUT'] + '/sock')"`,
    /not collected: \$KILN_OUT\/sock: a socket/,
    { artifacts: [] },
  ],
  [
    "plant names with control characters or a leading dot in $KILN_OUT",
    `touch "$KILN_OUT/$(printf 'evil\\nname')" $KILN_OUT/.hidden`,
    /not collected: \$KILN_OUT\/\.hidden: a name Kiln does not allow[\s\S]*not collected: \$KILN_OUT\/evil\\x0aname: a name Kiln does not allow/,
    { artifacts: [] },
  ],
  [
    "upload an artifact whose name climbs out of the job's directory",
    "echo x > /tmp/x; kiln job upload /tmp/x --name ../../escape.txt 2>&1; kiln job upload /tmp/x --name d/../../e.txt 2>&1",
    /not an artifact name[\s\S]*not an artifact name/,
    { artifacts: [] },
  ],
  [
    "upload an artifact whose name holds a control character",
    `echo x > /tmp/x; kiln job upload /tmp/x --name "$(printf 'a\\tb')" 2>&1`,
    /not an artifact name/,
    { artifacts: [] },
  ],
  [
    "stall or crash the worker with uploads whose names clash (a file where a directory is)",
    "echo x > /tmp/x; kiln job upload /tmp/x --name d/f >/dev/null; kiln job upload /tmp/x --name d 2>&1; kiln job upload /tmp/x --name d/f/g 2>&1",
    /artifact d clashes with one uploaded before[\s\S]*artifact d\/f\/g clashes with one uploaded before/,
    { artifacts: ["d/f"] },
  ],
  [
    "fill the worker's disk with one file past the artifact budget",
    "head -c 9M /dev/zero > $KILN_OUT/big.bin; echo small > $KILN_OUT/a.txt",
    /big\.bin \(9 MiB\) passes this job's artifact budget of 8 MiB/,
    { state: ["failed", "artifact_budget"], artifacts: ["a.txt"] },
  ],
  [
    "fill the worker's disk with many uploads past the artifact budget",
    "head -c 3M /dev/zero > /tmp/f; for i in 1 2 3 4; do kiln job upload /tmp/f --name f$i.bin 2>&1; done",
    /f3\.bin \(3 MiB\) passes this job's artifact budget of 8 MiB/,
    { state: ["failed", "artifact_budget"], artifacts: ["f1.bin", "f2.bin"] },
  ],
  [
    "swap a directory of $KILN_OUT for a symlink to /etc while it is collected",
    "mkdir $KILN_OUT/d; echo in > $KILN_OUT/d/f.txt; cd $KILN_OUT; (while :; do mv d d2; ln -s /etc d; rm d; mv d2 d; done) >/dev/null 2>&1 & sleep 0.3",
    /^/,
    { artifacts: /^d2?\/f\.txt$/ },
  ],
];

describe.skipIf(!root)("the escape suite", () => {
  let tcp: { port: number; stop(closeActive?: boolean): void };
  let tcpHits = 0;
  let abstract: ReturnType<typeof Bun.spawn>;
  const results = new Map<string, { job: JobJson; out: string; artifacts: Map<string, Buffer> }>();

  beforeAll(async () => {
    tcp = Bun.listen<undefined>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open() {
          tcpHits++;
        },
        data() {},
      },
    });
    abstract = Bun.spawn([
      "python3",
      "-c",
      "import socket,time; s=socket.socket(socket.AF_UNIX); s.bind(b'\\0kiln-test-abstract'); s.listen(); time.sleep(300)",
    ]);
    const ids = await Promise.all(
      ESCAPES.map(([, script]) =>
        sh(
          `${script
            .replaceAll("DATA", m.data)
            .replaceAll("HOSTPID", String(process.pid))
            .replaceAll("TCPPORT", String(tcp.port))
            .replaceAll("SUID", suid)}; echo BLOCKED`,
        ),
      ),
    );
    for (const [i, id] of ids.entries()) {
      const job = await waitJob(m, id, 60_000);
      const artifacts = new Map<string, Buffer>();
      const listed = await m.api<{ name: string }[]>("GET", `/api/v1/jobs/${id}/artifacts`);
      for (const { name } of listed.body) {
        const res = await fetch(`${m.url}/api/v1/jobs/${id}/artifacts/${encodeURIComponent(name)}`, {
          headers: { authorization: `Bearer ${m.token}` },
        });
        artifacts.set(name, Buffer.from(await res.arrayBuffer()));
      }
      results.set(ESCAPES[i]![0], { job, out: await log(id), artifacts });
    }
  }, 180_000);

  afterAll(() => {
    tcp.stop(true);
    abstract.kill();
  });

  for (const [what, , expected, outcome] of ESCAPES) {
    test(`a job cannot ${what}`, () => {
      const r = results.get(what)!;
      if (outcome?.state) expect([r.job.state, r.job.reason]).toEqual(outcome.state);
      else expect(r.job.state).toBe("succeeded");
      const names = [...r.artifacts.keys()];
      if (Array.isArray(outcome?.artifacts)) expect(names).toEqual(outcome.artifacts);
      else if (outcome?.artifacts) for (const n of names) expect(n).toMatch(outcome.artifacts);
      expect(r.out).toMatch(expected);
      expect(r.out).toContain("BLOCKED");
      expect(r.out).not.toContain("visible");
      expect(r.out).not.toContain("ESCAPED");
    });
  }

  test("no artifact of any case holds a host secret: shadow, the admin token, the database", () => {
    const secrets = [
      readFileSync("/etc/shadow", "utf8").split("\n")[0]!,
      readFileSync(join(m.data, "admin.token"), "utf8").trim(),
      "SQLite format 3",
    ];
    for (const [what, r] of results)
      for (const [name, bytes] of r.artifacts)
        for (const secret of secrets)
          expect(`${what}: ${name} ${bytes.includes(secret)}`).toBe(`${what}: ${name} false`);
  });

  test("nothing reached the host's loopback service", () => {
    expect(tcpHits).toBe(0);
  });

  test("the host's hostname is unchanged", () => {
    expect(hostname()).not.toBe("hacked");
  });

  test("a job cannot read another running job's scratch or log", async () => {
    const a = await sh("echo topsecret > /tmp/secret-a; echo started; sleep 30");
    await waitFor("job a to write its secret", async () => (await log(a)).includes("started"));
    const b = await sh(
      `cat /proc/*/root/tmp/secret-a 2>&1; find / -xdev -name secret-a 2>/dev/null; cat ${m.data}/logs/${a}.log 2>&1; echo BLOCKED`,
    );
    const job = await waitJob(m, b);
    const out = await log(b);
    expect(job.state).toBe("succeeded");
    expect(out).not.toContain("topsecret");
    expect(out).not.toContain("started");
    expect(out).toContain("BLOCKED");
    await m.cli(["cancel", String(a)]);
    await waitJob(m, a);
  }, 60_000);

  test("a daemon a job leaves behind does not outlive it", async () => {
    const marker = `kiln-daemon-${Date.now()}`;
    const id = await sh(
      `setsid nohup sh -c 'sleep 1000' ${marker} >/dev/null 2>&1 & (sleep 1000 &) ; echo spawned`,
    );
    expect((await waitJob(m, id)).state).toBe("succeeded");
    expect(Bun.spawnSync(["pgrep", "-f", marker]).exitCode).toBe(1);
  });
});

describe.skipIf(!root)("limits and reasons", () => {
  test("allocating past the memory limit fails the job with reason oom and reports the peak", async () => {
    const id = await sh("head -c 400M /dev/zero | tail > /dev/null; echo survived", {
      memoryBytes: 64 << 20,
    });
    const job = await waitJob(m, id);
    expect([job.state, job.reason]).toEqual(["failed", "oom"]);
    const view = JSON.parse((await m.cli(["show", String(id), "--json"])).stdout);
    expect(view.resources.peakMemoryBytes).toBeGreaterThan(32 << 20);
  }, 60_000);

  test("a fork bomb hits the pids limit and fails with reason pids", async () => {
    // Each fork that the limit refuses is an error (bash would retry it until earlier children end).
    const id = await sh(
      `python3 -c 'import os, time\nfor i in range(200):\n    if os.fork() == 0:\n        time.sleep(5)\n        os._exit(0)'`,
      { pids: 32 },
    );
    const job = await waitJob(m, id, 60_000);
    expect([job.state, job.reason]).toEqual(["failed", "pids"]);
  }, 60_000);

  test("filling the scratch past its size gives ENOSPC and reason no_space, and the host keeps its space", async () => {
    const id = await sh("df -m /tmp | tail -1; dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1", {
      scratchBytes: 16 << 20,
    });
    const job = await waitJob(m, id);
    expect([job.state, job.reason]).toEqual(["failed", "no_space"]);
    expect(await log(id)).toContain("No space left on device");
  }, 60_000);

  test("show reports peak memory and CPU time of a job", async () => {
    const id = await sh("i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo $i");
    const job = await waitJob(m, id);
    expect(job.state).toBe("succeeded");
    const show = await m.cli(["show", String(id)]);
    expect(show.stdout).toMatch(/peak memory: \d/);
    expect(show.stdout).toMatch(/cpu time:\s+\d/);
  }, 60_000);

  test("the job sees its own environment: HOME and KILN_OUT on the scratch, KILN_API, /kiln/bin/kiln", async () => {
    const id = await sh(
      "echo $HOME $KILN_OUT $KILN_API $KILN_JOB_ID; stat -c %U:%a $HOME; df --output=size -m /tmp | tail -1; /kiln/bin/kiln --version; kiln job progress 40 halfway there; echo artifact > $KILN_OUT/result.txt",
      {
        scratchBytes: 32 << 20,
      },
    );
    const job = await waitJob(m, id);
    const out = await log(id);
    expect(job.state).toBe("succeeded");
    expect(out).toContain(`/tmp/home /tmp/out http://127.0.0.1:7070 ${id}`);
    expect(out).toMatch(/kiln 0\.\d+\.\d+/);
    const view = JSON.parse((await m.cli(["show", String(id), "--json"])).stdout);
    expect(view.progress).toEqual({ percent: 40, message: "halfway there" });
  }, 60_000);

  test("a timeout kills the whole sandbox and ends timed_out", async () => {
    const id = await sh("sleep 300 & sleep 300", { timeoutMs: 1000 });
    const job = await waitJob(m, id);
    expect(job.state).toBe("timed_out");
  });

  test("cancel kills a sandboxed job within a second", async () => {
    const id = await sh("echo up; sleep 300");
    await waitFor("the job to start", async () => (await log(id)).includes("up"));
    const t0 = Date.now();
    await m.cli(["cancel", String(id)]);
    expect((await waitJob(m, id)).state).toBe("cancelled");
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test("a set-up failure ends the job with reason sandbox and says which step failed", async () => {
    const id = await sh("true", { scratchBytes: 128 * 2 ** 40 });
    const job = await waitJob(m, id);
    expect([job.state, job.reason]).toEqual(["failed", "sandbox"]);
    expect(job.message).toMatch(/scratch/i);
  });
});

describe.skipIf(!root)("slots", () => {
  test("mark-broken from inside a job holds its slot until an operator releases it", async () => {
    const id = await sh("kiln job mark-broken probe not answering");
    expect((await waitJob(m, id)).state).toBe("succeeded");
    const workers = JSON.parse((await m.cli(["workers", "--json"])).stdout) as {
      slots: { name: string; held: string | null }[];
    }[];
    const held = workers[0]!.slots.find((s) => s.held);
    expect(held?.held).toContain("probe not answering");
    const text = (await m.cli(["workers"])).stdout;
    expect(text).toContain(`sbx/${held!.name} held: marked broken by job ${id}: probe not answering`);
    expect((await m.cli(["release", "sbx", "--slot", held!.name])).code).toBe(0);
    await waitFor("the slot to be released", async () => {
      const w = JSON.parse((await m.cli(["workers", "--json"])).stdout) as {
        slots: { held: string | null }[];
      }[];
      return w[0]!.slots.every((s) => !s.held);
    });
  });
});

describe.skipIf(!root)("slots with resources and health checks, and a worker killed mid-job", () => {
  const flag = join(dir.path, "probe-present");
  const config = join(dir.path, "hw.toml");
  const workerData = join(dir.path, "hw");
  let hwRole: Role | undefined;
  const startHw = async () => {
    hwRole = await startWorker(m, dir.path, "hw", {
      args: ["--config", config],
      data: workerData,
      env: { KILN_WORKER_HEALTH_INTERVAL: "500ms" },
    });
  };
  const slotsOf = async () =>
    (
      JSON.parse((await m.cli(["workers", "--json"])).stdout) as {
        name: string;
        slots: { name: string; held: string | null; job: number | null }[];
      }[]
    ).find((w) => w.name === "hw")!.slots;

  beforeAll(() => {
    if (!root) return;
    writeFileSync(flag, "");
    writeFileSync(
      config,
      `[worker]\nchannels = ["hw"]\n\n[[worker.slots]]\nname = "probe"\nresources = ["probe"]\nmemory = "256M"\nhealth_check = "test -e ${flag} || { echo probe unplugged; exit 1; }"\n\n[[worker.slots]]\nname = "plain"\n`,
    );
  });

  test("a job that needs a slot resource runs only on the slot that has it, with the slot's default limits", async () => {
    await startHw();
    const ids = await Promise.all(
      [1, 2, 3].map(() =>
        sh(
          "grep -E '^(limit|hierarchical_memory_limit)' /sys/fs/cgroup/memory/memory.stat 2>/dev/null; echo ok",
          { channel: "hw", needs: ["probe"] },
        ),
      ),
    );
    for (const id of ids) {
      const job = await waitJob(m, id);
      expect(job.state).toBe("succeeded");
      expect(JSON.parse((await m.cli(["show", String(id), "--json"])).stdout).slot).toBe("probe");
    }
  }, 60_000);

  test("a slot whose health check fails is not offered, and is again once it passes", async () => {
    rmSync(flag);
    await waitFor("the probe slot to be held", async () =>
      (await slotsOf()).find((s) => s.name === "probe")?.held?.includes("probe unplugged"),
    );
    const id = await sh("echo ran", { channel: "hw", needs: ["probe"] });
    // A job queued after it that any slot can run is dispatched and ends: passes have run meanwhile, and
    // the probe job was passed over in each.
    const plain = await sh("echo ran", { channel: "hw" });
    expect((await waitJob(m, plain)).state).toBe("succeeded");
    expect((await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body.state).toBe("queued");
    writeFileSync(flag, "");
    expect((await waitJob(m, id)).state).toBe("succeeded");
  }, 60_000);

  test("kill -9 of a worker takes its sandboxes with it, and its restart sweeps what was left", async () => {
    const marker = `kiln-killed-worker-${Date.now()}`;
    const id = await sh(`echo up; exec -a ${marker} sleep 300`, {
      channel: "hw",
      needs: ["probe"],
      retries: 0,
    });
    await waitFor("the job to run", async () => (await log(id)).includes("up"));
    // While the job runs, its slot's next scratch volume is made ahead (other slots may hold theirs
    // already): beside the running job's own, at least one idle volume that the restart must remove too.
    const scratchDir = join(workerData, "worker", "scratch");
    await waitFor(
      "the next scratch volume to be made ahead",
      async () =>
        readdirSync(scratchDir).filter((f) => f.endsWith(".img") && !f.startsWith("layout-")).length >= 2,
    );
    await hwRole!.kill("SIGKILL");
    await waitFor(
      "the job's processes to die with the worker",
      () => Bun.spawnSync(["pgrep", "-f", marker]).exitCode === 1,
    );
    await startHw();
    const job = await waitJob(m, id);
    expect([job.state, job.reason]).toEqual(["failed", "lost"]);
    expect(readdirSync(join(workerData, "worker", "scratch")).filter((f) => f.endsWith(".img"))).toEqual([]);
    const loops = Bun.spawnSync(["losetup", "-a"]).stdout.toString();
    expect(loops).not.toContain(workerData);
    // The restarted worker still runs jobs on the same slot.
    const again = await sh("echo fine", { channel: "hw", needs: ["probe"] });
    expect((await waitJob(m, again)).state).toBe("succeeded");
  }, 90_000);
});

describe.skipIf(!root)("egress", () => {
  test("a job reaches an upstream allowed by --egress through the proxy, over http and https, and nothing else", async () => {
    const script = `python3 - <<'PY'
import urllib.request
for url in ["http://deb.debian.org/debian/dists/bookworm/Release", "https://deb.debian.org/debian/dists/bookworm/Release"]:
    with urllib.request.urlopen(url, timeout=30) as r:
        print(url.split(":")[0], r.status, r.read(9).decode())
try:
    urllib.request.urlopen("http://security.debian.org/", timeout=30)
    print("ESCAPED")
except Exception as e:
    print("other host refused:", e)
PY`;

    const id = await sh(script, { egress: ["deb.debian.org"] });
    const job = await waitJob(m, id, 90_000);
    const out = await log(id);
    expect(job.state).toBe("succeeded");
    expect(out).toContain("http 200 Origin: D");
    expect(out).toContain("https 200 Origin: D");
    expect(out).toContain("other host refused: HTTP Error 403");
    expect(out).not.toContain("ESCAPED");
  }, 120_000);
});

describe.skipIf(!root)("artifacts", () => {
  test("files left in $KILN_OUT and uploaded with kiln job upload are kept by the master and downloaded intact", async () => {
    const id = await sh(
      "head -c 300000 /dev/urandom > $KILN_OUT/blob.bin; sha256sum $KILN_OUT/blob.bin; echo note > /tmp/note.txt; kiln job upload /tmp/note.txt --name uploaded.txt; mkdir $KILN_OUT/sub",
    );
    const job = await waitJob(m, id);
    expect(job.state).toBe("succeeded");
    const listed = JSON.parse((await m.cli(["artifacts", String(id), "--json"])).stdout) as {
      name: string;
      size: number;
      sha256: string;
    }[];
    expect(listed.map((a) => a.name)).toEqual(["blob.bin", "uploaded.txt"]);
    const sum = (await log(id)).split(" ")[0];
    expect(listed[0]).toMatchObject({ size: 300000, sha256: sum });
    const out = join(dir.path, "blob.bin");
    const dl = await m.cli(["download", String(id), "blob.bin", "-o", out]);
    expect(dl.code).toBe(0);
    const h = new Bun.CryptoHasher("sha256");
    h.update(await Bun.file(out).arrayBuffer());
    expect(h.digest("hex")).toBe(sum!);
    expect((await m.cli(["download", String(id), "uploaded.txt", "-o", "-"])).stdout).toBe("note\n");
    const show = JSON.parse((await m.cli(["show", String(id), "--json"])).stdout);
    expect(show.artifacts.map((a: { name: string }) => a.name)).toEqual(["blob.bin", "uploaded.txt"]);
    const missing = await m.cli(["download", String(id), "nope.bin"]);
    expect(missing.stderr).toContain("has no artifact nope.bin");
  });

  test("files in subdirectories of $KILN_OUT and uploads named dir/file are kept as dir/file and download as ./file", async () => {
    const id = await sh(
      "mkdir -p $KILN_OUT/sub/deeper $KILN_OUT/empty; echo nested > $KILN_OUT/sub/deeper/n.txt; echo top > $KILN_OUT/top.txt; echo doc > /tmp/d; kiln job upload /tmp/d --name docs/readme.txt",
    );
    expect((await waitJob(m, id)).state).toBe("succeeded");
    const listed = JSON.parse((await m.cli(["artifacts", String(id), "--json"])).stdout) as {
      name: string;
    }[];
    expect(listed.map((a) => a.name)).toEqual(["docs/readme.txt", "sub/deeper/n.txt", "top.txt"]);
    using cwd = tempDir("kiln-download-");
    const dl = await kiln(["download", String(id), "sub/deeper/n.txt"], {
      cwd: cwd.path,
      env: { KILN_URL: m.url, KILN_TOKEN: m.token },
    });
    expect(dl.code).toBe(0);
    expect(readdirSync(cwd.path)).toEqual(["n.txt"]);
    expect(readFileSync(join(cwd.path, "n.txt"), "utf8")).toBe("nested\n");
    const climb = await m.cli(["download", String(id), "../sub/deeper/n.txt"]);
    expect(climb.code).not.toBe(0);
    expect(climb.stderr).toContain("is not an artifact name");
  });
});

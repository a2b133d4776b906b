import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  pidsMatching,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Template builds run in the build sandbox: a template script is root only inside its tree. The escape
 * probes below are data: each prints ESCAPED when its attack works, and each is first shown to work on the
 * host, so a probe that could never succeed cannot pass here. Then the limits ([templates] build_timeout
 * and build_memory) and the kept log of a failed build. Needs root and Debian's archive.
 */

const root = process.getuid?.() === 0;
if (!root) console.error("template sandbox tests skipped: they need root (debootstrap, the sandbox)");

const dir = tempDir("kiln-c-tplsb-", "/var/tmp");
const hostDir = join(dir.path, "host-dir");
let m: Master;
let hits: string[] = [];
let server: ReturnType<typeof Bun.serve> | null = null;
let sleeper: ReturnType<typeof Bun.spawn> | null = null;
const log = async (id: number) => (await m.cli(["logs", String(id)])).stdout;
const sh = (script: string, extra: Record<string, unknown> = {}) =>
  submitJob(m, { command: ["/bin/sh", "-c", script], ...extra });
const WORKER = "c-tplsb";
// A host process a probe looks for by its command line: its argument is unusual enough to be unique.
const SLEEP_ARG = "31337.25";

const start = (env: Record<string, string> = {}) =>
  startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: WORKER, ...env },
  });

beforeAll(async () => {
  if (!root) return;
  mkdirSync(hostDir);
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    development: false,
    fetch(req) {
      hits.push(req.url);
      return new Response("kiln-c-probe-ok\n");
    },
  });
  sleeper = Bun.spawn(["sleep", SLEEP_ARG], { stdout: "ignore", stderr: "ignore" });
  m = await start();
});

afterAll(async () => {
  if (!root) return;
  sleeper?.kill();
  server?.stop(true);
  await m.kill("SIGTERM");
  await stopAll();
  dir[Symbol.dispose]();
});

/** The build cgroups of this test's worker in every hierarchy. */
const buildCgroups = () =>
  readdirSync("/sys/fs/cgroup")
    .map((c) => join("/sys/fs/cgroup", c, "kiln", WORKER))
    .filter((d) => existsSync(d))
    .flatMap((d) => readdirSync(d).filter((e) => e.startsWith("build-")));

/** Each attack, as a shell snippet that prints "ESCAPED <name>" if it worked and "refused <name>" if not. */
const probes = (): [string, string][] => {
  const port = server!.port;
  const token = join(m.data, "admin.token");
  const ok = (name: string, cmd: string) =>
    `if ${cmd}; then echo "ESCAPED ${name}"; else echo "refused ${name}"; fi`;
  return [
    [
      "host loopback",
      ok(
        "host loopback",
        `timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port} && printf "GET /direct HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n" >&3 && cat <&3' 2>/dev/null | grep -q kiln-c-probe-ok`,
      ),
    ],
    [
      "host network",
      ok(
        "host network",
        `timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80 && printf "HEAD / HTTP/1.0\\r\\nHost: deb.debian.org\\r\\n\\r\\n" >&3 && cat <&3' 2>/dev/null | grep -q "^HTTP/"`,
      ),
    ],
    ["write a host dir", ok("write a host dir", `touch ${hostDir}/pwned 2>/dev/null`)],
    [
      "see host processes",
      ok(
        "see host processes",
        `for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done 2>/dev/null | grep -q '^sleep ${SLEEP_ARG}'`,
      ),
    ],
    [
      "mount",
      ok(
        "mount",
        "mkdir -p /tmp/kiln-c-mnt && mount -t tmpfs none /tmp/kiln-c-mnt 2>/dev/null && umount /tmp/kiln-c-mnt",
      ),
    ],
    ["unshare", ok("unshare", "unshare --mount --pid --fork true 2>/dev/null")],
    ["mknod", ok("mknod", "mknod /tmp/kiln-c-sda b 8 0 2>/dev/null && rm -f /tmp/kiln-c-sda")],
    [
      "read the master's data dir",
      ok("read the master's data dir", `test -s ${token} && cat ${token} >/dev/null`),
    ],
  ];
};

describe.skipIf(!root)("template builds in the sandbox", () => {
  test("every escape probe works on the host, outside any sandbox", async () => {
    for (const [name, probe] of probes()) {
      const p = Bun.spawn(["bash", "-c", probe], { stdout: "pipe", stderr: "pipe" });
      const out = await new Response(p.stdout).text();
      await p.exited;
      expect(out, name).toContain(`ESCAPED ${name}`);
    }
    // Undo what the probes did on the host.
    Bun.spawnSync(["rm", "-f", join(hostDir, "pwned")]);
    hits = [];
  }, 60_000);

  test("a debootstrap template builds through the egress proxy and a job runs on it", async () => {
    const add = await m.cli([
      "template",
      "add",
      "c-base",
      "--debootstrap",
      "bookworm",
      "--variant",
      "minbase",
    ]);
    expect(add.code, add.stderr).toBe(0);
    const id = await sh("cat /etc/debian_version; id -u", { root: "c-base" });
    const job = await waitJob(m, id, 900_000);
    const out = await log(id);
    expect(job.state, out).toBe("succeeded");
    expect(out).toMatch(/^12\.\d+$/m);
    expect(out).toContain("debootstrap --foreign");
    expect(out).toContain("/debootstrap/debootstrap --second-stage");
  }, 900_000);

  test("a template script cannot reach the host's network, files, processes, mounts or data", async () => {
    const script = join(dir.path, "escape.sh");
    writeFileSync(
      script,
      `${probes()
        .map(([, p]) => p)
        .join("\n")}\necho probes-done\n`,
    );
    expect((await m.cli(["template", "add", "c-escape", "--script", script, "--base", "c-base"])).code).toBe(
      0,
    );
    const id = await sh("true", { root: "c-escape" });
    const job = await waitJob(m, id, 300_000);
    const out = await log(id);
    expect(job.state, out).toBe("succeeded");
    expect(out).toContain("probes-done");
    expect(out).not.toContain("ESCAPED");
    for (const [name] of probes()) expect(out).toContain(`refused ${name}`);
    expect(existsSync(join(hostDir, "pwned"))).toBe(false);
    expect(hits).toEqual([]);
  }, 300_000);

  test("a script template installs a package with apt-get through the proxy to the tree's mirror", async () => {
    const script = join(dir.path, "hello.sh");
    writeFileSync(
      script,
      "apt-get update\napt-get install -y --no-install-recommends hello\napt-get clean\n",
    );
    expect((await m.cli(["template", "add", "c-hello", "--script", script, "--base", "c-base"])).code).toBe(
      0,
    );
    const id = await sh("hello", { root: "c-hello" });
    const job = await waitJob(m, id, 600_000);
    const out = await log(id);
    expect(job.state, out).toBe("succeeded");
    expect(out).toContain("egress for this step: deb.debian.org");
    expect(out).toContain("Hello, world!");
  }, 600_000);

  test("a failed build names a kept log that still holds debootstrap's own log, and the mirror was never reached", async () => {
    const mirror = `http://127.0.0.1:${server!.port}/debian`;
    const add = await m.cli([
      "template",
      "add",
      "c-loopmirror",
      "--debootstrap",
      "bookworm",
      "--mirror",
      mirror,
    ]);
    expect(add.code, add.stderr).toBe(0);
    const id = await sh("true", { root: "c-loopmirror" });
    const job = await waitJob(m, id, 300_000);
    expect([job.state, job.reason]).toEqual(["failed", "sandbox"]);
    expect(job.message).toContain("building template c-loopmirror failed");
    const kept = /the whole build log is kept at (\S+)/.exec(job.message ?? "")?.[1];
    expect(kept, job.message ?? "").toBeDefined();
    expect(kept!.startsWith(join(m.data, "worker", "templates", "failed"))).toBe(true);
    const text = readFileSync(kept!, "utf8");
    expect(text).toContain("debootstrap --foreign");
    expect(text).toContain("/debootstrap/debootstrap.log of the failed tree");
    expect(hits).toEqual([]);
    const cache = join(m.data, "worker", "templates");
    expect(readdirSync(cache).filter((e) => e.endsWith(".building"))).toEqual([]);
  }, 300_000);

  test("a build past templates.build_timeout, build_memory or build_pids fails saying so, and leaves nothing behind", async () => {
    await m.kill("SIGTERM");
    m = await start({
      KILN_TEMPLATES_BUILD_TIMEOUT: "30s",
      KILN_TEMPLATES_BUILD_MEMORY: "64M",
      KILN_TEMPLATES_BUILD_PIDS: "64",
    });
    const slow = join(dir.path, "slow.sh");
    writeFileSync(slow, "echo sleeping; sleep 6061\n");
    const hog = join(dir.path, "hog.sh");
    writeFileSync(hog, "awk 'BEGIN { s = \"x\"; while (1) s = s s }'\necho survived\n");
    const forks = join(dir.path, "forks.sh");
    writeFileSync(forks, "for i in $(seq 200); do sleep 6063 & done\nwait\necho all-forked\n");
    for (const [name, file] of [
      ["c-slow", slow],
      ["c-hog", hog],
      ["c-forks", forks],
    ] as const)
      expect((await m.cli(["template", "add", name, "--script", file, "--base", "c-base"])).code).toBe(0);
    const [slowId, hogId] = [await sh("true", { root: "c-slow" }), await sh("true", { root: "c-hog" })];
    const slowJob = await waitJob(m, slowId, 120_000);
    expect([slowJob.state, slowJob.reason]).toEqual(["failed", "sandbox"]);
    expect(slowJob.message).toContain("took longer than templates.build_timeout (30.0s) and was stopped");
    const hogJob = await waitJob(m, hogId, 120_000);
    expect([hogJob.state, hogJob.reason]).toEqual(["failed", "sandbox"]);
    expect(hogJob.message).toContain("ran out of memory (templates.build_memory is 64");
    expect(await log(hogId)).not.toContain("survived");
    const forksId = await sh("true", { root: "c-forks" });
    const forksJob = await waitJob(m, forksId, 120_000);
    expect([forksJob.state, forksJob.reason]).toEqual(["failed", "sandbox"]);
    expect(forksJob.message).toContain("the build hit its process limit (templates.build_pids is 64)");
    expect(await log(forksId)).not.toContain("all-forked");
    expect(pidsMatching("sleep 6063")).toEqual([]);
    // Nothing of either build is left: processes, cgroups, mounts of their trees, half-built trees.
    expect(pidsMatching("sleep 6061")).toEqual([]);
    await waitFor("the build cgroups to go", () => buildCgroups().length === 0);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(dir.path);
    const cache = join(m.data, "worker", "templates");
    expect(readdirSync(cache).filter((e) => e.endsWith(".building"))).toEqual([]);
  }, 300_000);

  test("a worker killed in the middle of a build takes the build with it, and its restart sweeps the rest", async () => {
    const stuck = join(dir.path, "stuck.sh");
    writeFileSync(stuck, "sleep 6062\n");
    expect((await m.cli(["template", "add", "c-stuck", "--script", stuck, "--base", "c-base"])).code).toBe(0);
    // No retry: a re-run after the restart would start the same build again.
    const id = await sh("true", { root: "c-stuck", retries: 0 });
    await waitFor("the stuck build to run", () => pidsMatching("sleep 6062").length > 0, 60_000);
    await m.kill("SIGKILL");
    // The launcher dies with the worker, its PID 1 with the launcher, and the pid namespace with PID 1.
    await waitFor(
      "the build's processes to die with the worker",
      () => pidsMatching("sleep 6062").length === 0,
    );
    m = await start();
    expect((await waitJob(m, id, 60_000)).state).toBe("failed");
    const cache = join(m.data, "worker", "templates");
    await waitFor("the sweep", () => buildCgroups().length === 0);
    expect(readdirSync(cache).filter((e) => e.endsWith(".building"))).toEqual([]);
    expect(pidsMatching("sleep 6062")).toEqual([]);
    expect(readFileSync("/proc/self/mountinfo", "utf8")).not.toContain(dir.path);
  }, 120_000);
});

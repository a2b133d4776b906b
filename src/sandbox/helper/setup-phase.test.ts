/**
 * The launcher's setup phase (`--setup SCRIPT`, with `--overlay-root`): before the job's command, SCRIPT runs
 * as uid 0 with the build capabilities only, NoNewPrivs and seccomp, in the job's own namespaces, on the
 * job's overlay. These are the attacks a setup could try: see the host, reach the network past the job's
 * API forwarder, keep anything after the job, leave a process for the job, gain a capability, or plant a
 * set-uid binary that lifts the job's command. Every test is a real run of the helper as root
 * (dist/kiln-sandbox, built by scripts/build).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { BUILD_CAPS, makeRoot, mountsUnder, treeState } from "./test-support.ts";

const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn("kiln-sandbox setup phase tests skipped: they need root");
const HELPER = resolve(import.meta.dir, "../../../dist/kiln-sandbox");
const UID = 61000;
const ENV = { PATH: "/usr/bin:/bin", HOME: "/tmp/home", LANG: "C", KILN_VAR_X: "from-env" };

let dir = "";
let tree = "";
let mountsAtStart = "";
const mounts = () => mountsUnder(dir);

/* A template-like tree of a few host programs and their libraries (bash for its /dev/tcp). */
function makeTree(name: string): string {
  const programs = "sh bash cat touch id ls sleep chmod chown cp grep mount unshare rm tr nohup".split(" ");
  const root = makeRoot(dir, name, programs);
  mkdirSync(join(root, "opt"));
  writeFileSync(join(root, "etc/marker"), "from-template\n");
  return root;
}

async function run(setup: string, job: string, extra: string[] = []) {
  const status = join(dir, `status-${Math.random().toString(36).slice(2)}`);
  const fd = openSync(status, "w");
  const p = Bun.spawn(
    [
      HELPER,
      "--uid",
      `${UID}`,
      "--gid",
      `${UID}`,
      "--status-fd",
      "3",
      "--root",
      tree,
      "--overlay-root",
      "--setup",
      setup,
      ...extra,
      "--",
      "/bin/sh",
      "-c",
      job,
    ],
    // biome-ignore lint/suspicious/noExplicitAny: Bun's stdio typing does not cover extra fds
    { stdio: ["ignore", "pipe", "pipe", fd] as any, env: ENV },
  ) as Bun.Subprocess<"ignore", "pipe", "pipe">;
  closeSync(fd);
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { stdout, stderr, code, status: readFileSync(status, "utf8").split("\n").filter(Boolean) };
}

beforeAll(() => {
  if (!isRoot) return;
  dir = mkdtempSync("/var/tmp/kiln-c-setup-");
  tree = makeTree("tree");
  mountsAtStart = mounts();
});
afterAll(() => {
  if (!isRoot) return;
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!isRoot)("kiln-sandbox --setup", () => {
  test("the setup runs first as root with only the build capabilities, then the job unprivileged, each marked in the output", async () => {
    const r = await run(
      [
        "id -u",
        "grep -E '^(CapBnd|CapEff|CapPrm|CapInh|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
        'echo "home=$HOME x=$KILN_VAR_X cwd=$(pwd)"',
        "mount -t tmpfs none /opt 2>&1 || echo mount-refused",
        "unshare --mount true 2>&1 || echo unshare-refused",
        "echo installed > /etc/installed",
      ].join("; "),
      "id -u; cat /etc/installed; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status",
    );
    expect(r.code, r.stderr).toBe(0);
    const [setup, job] = r.stdout.split("--- kiln: job ---\n");
    expect(setup).toStartWith("--- kiln: setup ---\n0\n");
    for (const set of ["CapBnd", "CapEff", "CapPrm"]) expect(setup).toContain(`${set}:\t${BUILD_CAPS}`);
    for (const set of ["CapInh", "CapAmb"]) expect(setup).toContain(`${set}:\t0000000000000000`);
    expect(setup).toContain("NoNewPrivs:\t1");
    expect(setup).toContain("Seccomp:\t2");
    expect(setup).toContain("home=/root x=from-env cwd=/");
    expect(setup).toContain("mount-refused");
    expect(setup).toContain("unshare-refused");
    expect(job).toStartWith(`${UID}\ninstalled\n`);
    for (const set of ["CapBnd", "CapEff", "CapPrm"]) expect(job).toContain(`${set}:\t0000000000000000`);
    expect(job).toContain("NoNewPrivs:\t1");
    expect(r.status).toEqual([
      expect.stringMatching(/^setup \d+$/),
      expect.stringMatching(/^ready \d+$/),
      "exit 0",
    ]);
    expect(mounts()).toBe(mountsAtStart);
  });

  test("the setup sees neither the host's root nor the launcher's init, and cannot stop it", async () => {
    const r = await run(
      [
        `ls ${dir} 2>&1 || echo host-dir-hidden`,
        "ls /.kiln-host 2>&1 || echo no-host-root",
        "ls /proc/1/root/ 2>&1 || echo init-root-hidden",
        "cat /proc/1/environ 2>&1 || echo init-environ-hidden",
        // SIGKILL and SIGSTOP to a namespace's init from inside it are dropped by the kernel (other signals
        // reach it and are forwarded to the setup's own process group, as for a job).
        "kill -KILL 1; kill -STOP 1; echo signalled",
      ].join("; "),
      "echo job-ran",
    );
    expect(r.code, r.stderr).toBe(0);
    for (const s of [
      "host-dir-hidden",
      "no-host-root",
      "init-root-hidden",
      "init-environ-hidden",
      "signalled",
    ])
      expect(r.stdout).toContain(s);
    expect(r.stdout).toContain("--- kiln: job ---\njob-ran\n");
  });

  test("the setup reaches only the job's API forwarder, not the host's network", async () => {
    const sock = join(dir, "api.sock");
    const api = Bun.listen({
      unix: sock,
      socket: { data: (s) => void s.end("via-forwarder\n") },
    });
    const host = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: { data: (s) => void s.end("host\n") },
    });
    try {
      const r = await run(
        [
          "bash -s <<'EOF'", // /dev/tcp is bash's
          `exec 3<>/dev/tcp/127.0.0.1/3128; echo hi >&3; read -r line <&3; echo "api=$line"`,
          `(exec 4<>/dev/tcp/127.0.0.1/${host.port}) 2>/dev/null && echo reached-host || echo host-unreachable`,
          "(exec 4<>/dev/tcp/1.1.1.1/80) 2>/dev/null && echo reached-outside || echo outside-unreachable",
          "cat /proc/net/dev | grep -c ':' ",
          "EOF",
        ].join("\n"),
        "true",
        ["--api", `3128:${sock}`],
      );
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain("api=via-forwarder");
      expect(r.stdout).toContain("host-unreachable");
      expect(r.stdout).toContain("outside-unreachable");
      expect(r.stdout).toContain("\n1\n"); // lo only
    } finally {
      api.stop(true);
      host.stop(true);
    }
  }, 20_000);

  test("the template keeps nothing the setup wrote, and the next job sees none of it", async () => {
    const before = treeState(tree);
    const first = await run("echo kept? > /etc/marker; echo new > /opt/new; rm /bin/ls", "cat /etc/marker");
    expect(first.stdout).toContain("--- kiln: job ---\nkept?\n");
    expect(treeState(tree)).toBe(before);
    const second = await run("true", "cat /etc/marker; ls /opt; test -e /opt/new || echo gone");
    expect(second.stdout).toContain("--- kiln: job ---\nfrom-template\ngone\n");
  });

  test("no process the setup started is left when the job's command runs", async () => {
    const r = await run(
      "sleep 1000 & (sleep 1001 &) ; nohup sleep 1002 >/dev/null 2>&1 & echo started",
      "for f in /proc/[0-9]*/cmdline; do cat $f 2>/dev/null | tr '\\0' ' '; echo; done | grep -c '^sleep 100' || true",
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain("started\n--- kiln: job ---\n0\n");
  });

  test("a set-uid root binary the setup plants gives the job's command nothing", async () => {
    const r = await run(
      "cp /usr/bin/id /opt/suid-id && chown 0:0 /opt/suid-id && chmod 4755 /opt/suid-id && ls -l /opt/suid-id",
      "/opt/suid-id -u; /opt/suid-id -ru; grep NoNewPrivs /proc/self/status; grep ' / ' /proc/self/mountinfo",
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/-rwsr-xr-x 1 0 0 .* \/opt\/suid-id/);
    const job = r.stdout.split("--- kiln: job ---\n")[1]!;
    expect(job).toStartWith(`${UID}\n${UID}\nNoNewPrivs:\t1\n`);
    expect(job).toMatch(/ \/ \S+ \S*nosuid/);
  });

  test("a failed setup ends the run with its status and the job's command never starts", async () => {
    const failed = await run("echo trying; exit 3", "echo job-ran");
    expect(failed.stdout).toBe("--- kiln: setup ---\ntrying\n");
    expect(failed.status).toEqual([expect.stringMatching(/^setup \d+$/), "setup-failed exit 3"]);
    expect(failed.code).toBe(3);
    const killed = await run("kill -KILL $$", "echo job-ran");
    expect(killed.status.at(-1)).toBe("setup-failed signal 9");
    expect(killed.stdout).not.toContain("job-ran");
    // A setup that stops on its first failing command, as recipe scripts do (sh -e).
    const stops = await run("false; echo not-reached", "echo job-ran");
    expect(stops.status.at(-1)).toBe("setup-failed exit 1");
    expect(stops.stdout).not.toContain("not-reached");
    expect(mounts()).toBe(mountsAtStart);
  });

  test("--setup needs an overlay root and is not for build mode", async () => {
    const noOverlay = Bun.spawnSync(
      [HELPER, "--uid", `${UID}`, "--gid", `${UID}`, "--root", tree, "--setup", "true", "--", "true"],
      { env: ENV },
    );
    expect([noOverlay.exitCode, noOverlay.stderr.toString()]).toEqual([
      125,
      "error args: --setup needs --overlay-root and no --build\n",
    ]);
    const build = Bun.spawnSync(
      [HELPER, "--build", "--root", tree, "--overlay-root", "--setup", "true", "--", "true"],
      {
        env: ENV,
      },
    );
    expect(build.stderr.toString()).toBe("error args: --setup needs --overlay-root and no --build\n");
  });
});

import { afterAll, beforeAll, expect, test } from "bun:test";
import { cpSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  kiln,
  type Role,
  spawnRole,
  stopAll,
  tempDir,
  waitFor,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * TLS between hosts: network namespaces this test makes stand for machines on one network.
 *
 *     master 10.77.0.1 ─┐
 *     w1     10.77.0.2 ─┼─ bridge (its own namespace)
 *     w2     10.77.0.3 ─┘
 *     victim 10.77.0.4 ── impostor 10.77.0.1 (a link of their own: whatever the victim sends to the
 *                         master's address reaches the impostor, a man in the middle with its own CA)
 *
 * Each kiln is the compiled binary started with `ip netns exec`, under `timeout`, so a server outlives
 * the test by minutes at most even if the test runner is killed. The namespaces are removed at the end,
 * whatever happened, and any a killed run of this file left behind are removed at the start.
 */

const root = process.getuid?.() === 0;
const ID = `kt${process.pid}`;
const NS = {
  net: `${ID}-net`,
  master: `${ID}-m`,
  w1: `${ID}-w1`,
  w2: `${ID}-w2`,
  victim: `${ID}-v`,
  impostor: `${ID}-x`,
};
const MASTER = "https://10.77.0.1:7070";
// Far longer than this file takes; a bound on what a killed test run can leave running.
const LIFETIME = ["timeout", "-k", "10", "900"];
const inNs = (ns: string) => ["ip", "netns", "exec", ns, ...LIFETIME];

const dir = tempDir();
const mData = join(dir.path, "m");
const xData = join(dir.path, "x");
const caFile = join(mData, "tls", "ca.crt");
let master: Role;
let impostor: Role;
const workers: Record<string, Role> = {};

function sh(...argv: string[]) {
  const r = Bun.spawnSync(argv, { stderr: "pipe", stdout: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

/** Removes this run's namespaces, and those of runs of this file whose process is gone. */
function removeNamespaces(all = false) {
  for (const line of sh("ip", "netns", "list").split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = /^kt(\d+)-/.exec(name);
    if (!m) continue;
    const mine = m[1] === String(process.pid);
    if ((mine && all) || (!mine && !existsSync(`/proc/${m[1]}`)))
      Bun.spawnSync(["ip", "netns", "del", name], { stderr: "ignore" });
  }
}

/** Gives namespace `host` an interface eth0 with `addr`, its other end `peer` in namespace `other`. */
function link(host: string, addr: string, other: string, peer: string) {
  sh("ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", other);
  sh("ip", "-n", host, "addr", "add", `${addr}/24`, "dev", "eth0");
  sh("ip", "-n", host, "link", "set", "eth0", "up");
  sh("ip", "-n", host, "link", "set", "lo", "up");
}

function network() {
  for (const ns of Object.values(NS)) sh("ip", "netns", "add", ns);
  sh("ip", "-n", NS.net, "link", "add", "br0", "type", "bridge");
  sh("ip", "-n", NS.net, "link", "set", "br0", "up");
  for (const [host, addr] of [
    [NS.master, "10.77.0.1"],
    [NS.w1, "10.77.0.2"],
    [NS.w2, "10.77.0.3"],
  ] as const) {
    const port = `p${host.split("-")[1]}`;
    link(host, addr, NS.net, port);
    sh("ip", "-n", NS.net, "link", "set", port, "master", "br0", "up");
  }
  // The victim's only link leads to the impostor, which holds the master's address on it.
  link(NS.victim, "10.77.0.4", NS.impostor, "x0");
  sh("ip", "-n", NS.impostor, "addr", "add", "10.77.0.1/24", "dev", "x0");
  sh("ip", "-n", NS.impostor, "link", "set", "x0", "up");
  sh("ip", "-n", NS.impostor, "link", "set", "lo", "up");
}

/** A client command run on the master's host against the real master, trusting its CA. */
const cli = (args: string[]) =>
  kiln(args, {
    cwd: dir.path,
    wrap: ["ip", "netns", "exec", NS.master],
    env: {
      KILN_URL: MASTER,
      KILN_CA: caFile,
      KILN_TOKEN: readFileSync(join(mData, "admin.token"), "utf8").trim(),
    },
  });

/** A master (the real one, or the impostor) on 10.77.0.1:7070 in namespace `ns`. */
async function startMasterIn(ns: string, data: string, name: string): Promise<Role> {
  const m = spawnRole(["master", "--tls", "--data", data, "--listen", "10.77.0.1:7070"], {
    cwd: dir.path,
    env: { KILN_MASTER_TLS_NAMES: "10.77.0.1" },
    name,
    wrap: inNs(ns),
  });
  await waitFor(`${name} to listen`, () => {
    if (m.proc.exitCode !== null) throw new Error(`${name} exited: ${m.log()}`);
    return m.log().includes("master listening on https://10.77.0.1:7070");
  });
  return m;
}

/** A join token from the real master, in a 0600 file. */
async function joinFile(name: string): Promise<string> {
  const r = await cli(["token", "create", "--role", "worker"]);
  expect([r.code, r.stderr]).toEqual([0, ""]);
  const file = join(dir.path, `${name}.join`);
  writeFileSync(file, r.stdout, { mode: 0o600 });
  return file;
}

/** `kiln worker` on host namespace `ns`, serving channel `name`, with the process runner. */
function worker(ns: string, name: string, args: string[], master = MASTER): Role {
  const w = spawnRole(
    [
      "worker",
      "--master",
      master,
      "--name",
      name,
      "--channels",
      name,
      "--runner",
      "process",
      "--data",
      join(dir.path, name),
      ...args,
    ],
    { cwd: dir.path, name, wrap: inNs(ns) },
  );
  workers[name] = w;
  return w;
}

const connected = async (name: string) => {
  const r = await cli(["workers", "--json"]);
  return (JSON.parse(r.stdout || "[]") as { name: string; connected: boolean }[]).some(
    (w) => w.name === name && w.connected,
  );
};

/** Runs a job on channel `channel` that prints the address of the host it runs on. */
const whereAmI = (channel: string) =>
  cli([
    "submit",
    "--wait",
    "--channel",
    channel,
    "--",
    "/usr/sbin/ip",
    "-4",
    "-o",
    "addr",
    "show",
    "dev",
    "eth0",
  ]);

beforeAll(async () => {
  if (!root) return;
  removeNamespaces();
  network();
  master = await startMasterIn(NS.master, mData, "master");
  impostor = await startMasterIn(NS.impostor, xData, "impostor");
});
afterAll(async () => {
  await stopAll();
  if (root) removeNamespaces(true);
  dir[Symbol.dispose]();
});

test.skipIf(!root)(
  "two workers on their own hosts enroll with join tokens and run jobs over mutual TLS",
  async () => {
    worker(NS.w1, "n-w1", ["--join-file", await joinFile("n-w1")]);
    worker(NS.w2, "n-w2", ["--join-file", await joinFile("n-w2")]);
    await waitFor("both workers", async () => (await connected("n-w1")) && (await connected("n-w2")));
    const [a, b] = [await whereAmI("n-w1"), await whereAmI("n-w2")];
    expect([a.code, b.code]).toEqual([0, 0]);
    expect(a.stdout).toContain("inet 10.77.0.2/24");
    expect(b.stdout).toContain("inet 10.77.0.3/24");
    expect(master.log()).toContain("enrolled worker n-w1 from 10.77.0.2");
    expect(master.log()).toContain("enrolled worker n-w2 from 10.77.0.3");
  },
);

test.skipIf(!root)(
  "a man in the middle on the master's address is refused at enrollment by the token's fingerprint",
  async () => {
    const file = await joinFile("n-v");
    const victim = worker(NS.victim, "n-v", ["--join-file", file]);
    await victim.proc.exited;
    expect(victim.proc.exitCode).toBe(1);
    const real = readFileSync(file, "utf8").split(".")[1]!;
    expect(victim.log()).toMatch(new RegExp(`presents the CA [0-9a-f]{64}, but the join token pins ${real}`));
    expect(victim.log()).toContain("Nothing was sent");
    // The impostor never saw an enrollment, and the token is still unused for the real master.
    expect(impostor.log()).not.toContain("enroll");
    const tokens = JSON.parse((await cli(["token", "ls", "--json"])).stdout) as {
      kind: string;
      usedBy: string | null;
    }[];
    expect(tokens.filter((t) => t.kind === "join" && t.usedBy === null).length).toBe(1);
  },
);

test.skipIf(!root)(
  "a certificate from another CA is refused by the master, which says who and why, and that CA's worker refuses the master",
  async () => {
    // A certificate the impostor's CA really issued: a worker on the victim's host joins the impostor.
    const x = await kiln(["token", "create", "--role", "worker", "--data", xData], {
      cwd: dir.path,
      wrap: ["ip", "netns", "exec", NS.impostor],
      env: { KILN_URL: MASTER },
    });
    expect(x.code).toBe(0);
    const foreign = worker(NS.victim, "n-f", ["--join", x.stdout.trim()]);
    await waitFor("the foreign worker to join the impostor", () => foreign.log().includes("connected to"));
    await foreign.kill("SIGTERM");
    const copy = join(dir.path, "n-f2");
    cpSync(join(dir.path, "n-f"), copy, { recursive: true });
    // Taken as it is to the real master, the worker refuses that master: its CA does not vouch for it.
    const moved = spawnRole(
      ["worker", "--master", MASTER, "--name", "n-f", "--runner", "process", "--data", join(dir.path, "n-f")],
      { cwd: dir.path, name: "n-f-moved", wrap: inNs(NS.w1) },
    );
    await waitFor("the worker to refuse the master", () =>
      moved.log().includes("presents a certificate the CA this worker joined does not vouch for"),
    );
    await moved.kill("SIGTERM");
    // The same identity, made to trust the real master, presented to it from w1's host.
    cpSync(caFile, join(copy, "worker", "tls", "ca.pem"));
    const liar = spawnRole(
      ["worker", "--master", MASTER, "--name", "n-f", "--runner", "process", "--data", copy],
      { cwd: dir.path, name: "n-f2", wrap: inNs(NS.w1) },
    );
    await waitFor("the worker to be told why", () => liar.log().includes("CERTIFICATE_UNTRUSTED"));
    await waitFor("the master to say who and why", () =>
      master
        .log()
        .includes("refused a worker from 10.77.0.2 on /api/v1/worker/connect: CERTIFICATE_UNTRUSTED"),
    );
    expect(await connected("n-f")).toBe(false);
    await liar.kill("SIGTERM");
  },
);

test.skipIf(!root)(
  "a revoked worker's connection is closed and it cannot come back; the other works on",
  async () => {
    const rm = await cli(["workers", "rm", "n-w2", "--json"]);
    expect([rm.code, JSON.parse(rm.stdout)]).toEqual([0, { removed: "n-w2", revokedCertificates: 1 }]);
    await waitFor("n-w2 to be told", () => workers["n-w2"]!.log().includes("revoked"));
    await waitFor("its reconnect to be refused", () =>
      master.log().includes("refused a worker from 10.77.0.3 on /api/v1/worker/connect: CERTIFICATE_REVOKED"),
    );
    expect(master.log()).toContain("closed the connection of worker n-w2");
    expect(await connected("n-w2")).toBe(false);
    const still = await whereAmI("n-w1");
    expect([still.code, still.stdout]).toEqual([0, expect.stringContaining("inet 10.77.0.2/24")]);
    // Nothing serves n-w2's channel any more: its job waits.
    const queued = await cli(["submit", "--channel", "n-w2", "--json", "--", "true"]);
    const id = (JSON.parse(queued.stdout) as { id: number }).id;
    const shown = JSON.parse((await cli(["show", String(id), "--json"])).stdout) as { state: string };
    expect(shown.state).toBe("queued");
  },
);

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  freePort,
  kiln,
  type Role,
  spawnRole,
  stopAll,
  tempDir,
  waitFor,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * `kiln master --tls` on the compiled binary, as an operator uses it: the master creates its CA and
 * serves HTTPS and WSS on its one port; `kiln token create --role worker` prints a join token; a worker
 * joins with it, keeps its certificate and connects with mutual TLS from then on; client commands verify
 * the master with --ca, --ca-fingerprint or KILN_CA, and refuse it otherwise.
 */

const dir = tempDir();
const data = join(dir.path, "data");
const port = freePort();
const url = `https://127.0.0.1:${port}`;
let master: Role;
let ca: string;
let caFile: string;
let admin: string;
let fingerprint: string;

/** A client command against the TLS master with the admin token; `trust` says how it verifies the master. */
function cli(args: string[], trust: string[] = ["--ca", caFile], env: Record<string, string> = {}) {
  // The flags go before a job's `--`, which ends them.
  const dash = args.includes("--") ? args.indexOf("--") : args.length;
  const argv = [...args.slice(0, dash), "--url", url, ...trust, ...args.slice(dash)];
  return kiln(argv, { cwd: dir.path, env: { KILN_TOKEN: admin, ...env } });
}

/** Prints a join token (`kiln token create --role worker`) into a 0600 file and returns its path. */
async function joinFile(name: string, extra: string[] = []): Promise<string> {
  const r = await cli(["token", "create", "--role", "worker", ...extra]);
  expect([r.code, r.stderr]).toEqual([0, ""]);
  const file = join(dir.path, `${name}.join`);
  writeFileSync(file, r.stdout, { mode: 0o600 });
  return file;
}

/** `kiln worker` joining the TLS master; the join token comes from a file so it never shows in ps. */
function worker(name: string, join: string[], env: Record<string, string> = {}): Role {
  return spawnRole(
    [
      "worker",
      "--master",
      url,
      ...join,
      "--runner",
      "process",
      "--name",
      name,
      "--data",
      `${dir.path}/${name}`,
    ],
    { cwd: dir.path, env, name: `${name}-${Date.now()}` },
  );
}

const connected = async (name: string) => {
  const r = await cli(["workers", "--json"]);
  return (JSON.parse(r.stdout || "[]") as { name: string; connected: boolean }[]).some(
    (w) => w.name === name && w.connected,
  );
};

const count = (text: string, what: string) => text.split(what).length - 1;
const exited = async (r: Role) => {
  await r.proc.exited;
  return r.proc.exitCode;
};

beforeAll(async () => {
  master = spawnRole(["master", "--tls", "--data", data, "--listen", `127.0.0.1:${port}`], {
    cwd: dir.path,
    env: { KILN_MASTER_TLS_NAMES: "127.0.0.1,localhost" },
    name: "master",
  });
  caFile = join(data, "tls", "ca.crt");
  ca = await waitFor("the CA", () => {
    if (master.proc.exitCode !== null) throw new Error(`master exited: ${master.log()}`);
    try {
      return readFileSync(caFile, "utf8");
    } catch {
      return "";
    }
  });
  await waitFor("the master over https", async () => (await fetch(`${url}/readyz`, { tls: { ca } })).ok);
  admin = readFileSync(join(data, "admin.token"), "utf8").trim();
  fingerprint = /--ca-fingerprint ([0-9a-f]{64})/.exec(master.log())![1]!;
});
afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

describe("the master", () => {
  test("serves HTTPS with a certificate from its own CA, keys 0600, and no plain HTTP", async () => {
    expect(statSync(join(data, "tls")).mode & 0o777).toBe(0o700);
    expect(statSync(join(data, "tls", "ca.key")).mode & 0o777).toBe(0o600);
    expect(statSync(join(data, "tls", "server.key")).mode & 0o777).toBe(0o600);
    expect(await (await fetch(`${url}/api/v1/tls/ca`, { tls: { ca } })).text()).toBe(ca);
    const plain = await fetch(`http://127.0.0.1:${port}/readyz`).then(
      (r) => r.status,
      () => "refused",
    );
    expect(plain).not.toBe(200);
    expect(master.log()).toContain(`master listening on https://127.0.0.1:${port}`);
    // The certificate carries the configured names and addresses, and the CA is what the log names.
    const text = Bun.spawnSync([
      "openssl",
      "x509",
      "-in",
      join(data, "tls", "server.crt"),
      "-noout",
      "-text",
    ]);
    expect(text.stdout.toString()).toMatch(/IP Address:127\.0\.0\.1, DNS:localhost/);
    const fp = Bun.spawnSync(["openssl", "x509", "-in", caFile, "-noout", "-fingerprint", "-sha256"]);
    expect(fp.stdout.toString().replaceAll(":", "").toLowerCase()).toContain(fingerprint);
  });

  test("a worker without a certificate is refused on the websocket, and the master says who and why", async () => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/api/v1/worker/connect`, {
      headers: { authorization: `Bearer ${admin}` },
      tls: { ca },
    } as unknown as string[]);
    const closed = await new Promise<boolean>((resolve) => {
      ws.onopen = () => resolve(false);
      ws.onclose = () => resolve(true);
    });
    expect(closed).toBe(true);
    const res = await fetch(`${url}/api/v1/worker/connect`, {
      headers: { authorization: `Bearer ${admin}` },
      tls: { ca },
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe("WORKER_CERT_MISSING");
    await waitFor("the refusal in the log", () =>
      master.log().includes("refused a worker from 127.0.0.1 on /api/v1/worker/connect: WORKER_CERT_MISSING"),
    );
  });
});

describe("client commands", () => {
  test("refuse a master they cannot verify, saying what to pass", async () => {
    const blind = await cli(["workers"], []);
    expect(blind.code).toBe(1);
    expect(blind.stderr).toContain("presented a certificate this client does not trust");
    expect(blind.stderr).toContain("--ca FILE");
    const wrong = await cli(["workers"], ["--ca-fingerprint", "ab".repeat(32)]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain(`presents the CA ${fingerprint}, but --ca-fingerprint pins`);
    const name = await kiln(["workers", "--url", `https://localhost:${port}`, "--ca", caFile], {
      cwd: dir.path,
      env: { KILN_TOKEN: admin, KILN_MASTER_TLS_NAMES: "" },
    });
    expect(name.code).toBe(0);
  });

  test("verify the master with --ca, --ca-fingerprint or KILN_CA; --insecure warns on stderr", async () => {
    for (const trust of [
      ["--ca", caFile],
      ["--ca-fingerprint", fingerprint.toUpperCase()],
    ]) {
      const r = await cli(["workers", "--json"], trust);
      expect([trust[0], r.code, r.stderr]).toEqual([trust[0], 0, ""]);
    }
    for (const env of [caFile, fingerprint]) {
      const r = await cli(["workers", "--json"], [], { KILN_CA: env });
      expect([env, r.code, r.stderr]).toEqual([env, 0, ""]);
    }
    // A flag beats the environment.
    const flagFirst = await cli(["workers", "--json"], ["--ca", caFile], { KILN_CA: "ab".repeat(32) });
    expect([flagFirst.code, flagFirst.stderr]).toEqual([0, ""]);
    const insecure = await cli(["workers", "--json"], ["--insecure"]);
    expect(insecure.code).toBe(0);
    expect(insecure.stderr).toContain("warning: --insecure");
    const both = await cli(["workers"], ["--insecure", "--ca", caFile]);
    expect(both.code).toBe(2);
  });
});

describe("workers", () => {
  let first: Role;

  test("a worker joins with a join token, keeps its key 0600, and runs a job with an artifact over mutual TLS", async () => {
    const file = await joinFile("t-tls-1");
    const token = readFileSync(file, "utf8").trim();
    expect(token).toStartWith(`kiln1.${fingerprint}.`);
    first = worker("t-tls-1", ["--join-file", file]);
    await waitFor("t-tls-1 to connect", () => connected("t-tls-1"));
    const tlsDir = join(dir.path, "t-tls-1", "worker", "tls");
    expect(statSync(tlsDir).mode & 0o777).toBe(0o700);
    expect(statSync(join(tlsDir, "worker.pem")).mode & 0o777).toBe(0o600);
    // The token stays out of the worker's command line.
    expect(readFileSync(`/proc/${first.proc.pid}/cmdline`, "utf8")).not.toContain(token);
    const job = await cli([
      "submit",
      "--wait",
      "--",
      "sh",
      "-c",
      'echo over-mtls; mkdir "$KILN_OUT/sub"; echo made > "$KILN_OUT/sub/made+1.txt"',
    ]);
    expect([job.stdout, job.stderr]).toEqual(["over-mtls\n", expect.stringContaining("succeeded")]);
    expect(job.code).toBe(0);
    const id = /job (\d+) /.exec(job.stderr)![1]!;
    const arts = await cli(["artifacts", id, "--json"]);
    // A name with a directory and a "+", both sent encoded: the proof signs the path as it is sent.
    expect(JSON.parse(arts.stdout).map((a: { name: string }) => a.name)).toEqual(["sub/made+1.txt"]);
    expect(master.log()).toContain("enrolled worker t-tls-1 from 127.0.0.1");
  });

  test("a restarted worker reuses its certificate, and its spent join token enrolls nobody else", async () => {
    await first.kill("SIGTERM");
    first = worker("t-tls-1", ["--join-file", join(dir.path, "t-tls-1.join")]);
    await waitFor("t-tls-1 to connect again", () => connected("t-tls-1"));
    expect(count(master.log(), "enrolled worker t-tls-1 ")).toBe(1);
    expect(first.log()).not.toContain("joining");
    const thief = worker("t-tls-2", [], { KILN_JOIN: readFileSync(join(dir.path, "t-tls-1.join"), "utf8") });
    expect(await exited(thief)).toBe(1);
    expect(thief.log()).toContain("was already used by worker t-tls-1");
    await waitFor("the refusal in the master's log", () =>
      master.log().includes("refused /api/v1/tls/enroll for worker t-tls-2 from 127.0.0.1: JOIN_TOKEN_USED"),
    );
  });

  test("an expired join token is refused, and the master says who and why", async () => {
    const r = await cli(["token", "create", "--role", "worker", "--ttl", "1s", "--json"]);
    const made = JSON.parse(r.stdout) as { token: string; expiresAt: string };
    await waitFor("the token to expire", () => Date.now() > Date.parse(made.expiresAt) + 50);
    const late = worker("t-tls-3", ["--join", made.token]);
    expect(await exited(late)).toBe(1);
    expect(late.log()).toContain("expired at");
    await waitFor("the refusal in the master's log", () =>
      master
        .log()
        .includes("refused /api/v1/tls/enroll for worker t-tls-3 from 127.0.0.1: JOIN_TOKEN_EXPIRED"),
    );
  });

  test("kiln workers rm revokes the certificate and closes the connection; the worker cannot come back", async () => {
    const rm = await cli(["workers", "rm", "t-tls-1", "--json"]);
    expect(rm.code).toBe(0);
    expect(JSON.parse(rm.stdout)).toEqual({ removed: "t-tls-1", revokedCertificates: 1 });
    await waitFor("the worker to hear it is revoked", () => first.log().includes("CERTIFICATE_REVOKED"));
    expect(await connected("t-tls-1")).toBe(false);
    expect(master.log()).toContain("closed the connection of worker t-tls-1");
    await waitFor("the master to refuse its reconnect", () =>
      master.log().includes("refused a worker from 127.0.0.1 on /api/v1/worker/connect: CERTIFICATE_REVOKED"),
    );
    await first.kill("SIGTERM");
  });

  test("a new join token after kiln workers rm lets the worker join again; revoking that token disconnects it", async () => {
    const file = await joinFile("t-tls-1b");
    const again = worker("t-tls-1", ["--join-file", file]);
    await waitFor("t-tls-1 to join again", () => connected("t-tls-1"));
    expect(again.log()).toContain("the join token given is a new one");
    const tokens = JSON.parse((await cli(["token", "ls", "--json"])).stdout) as {
      id: string;
      kind: string;
      usedBy: string | null;
      revoked: boolean;
    }[];
    const used = tokens.filter((t) => t.kind === "join" && t.usedBy === "t-tls-1");
    expect(used.length).toBe(2);
    const last = used[used.length - 1]!;
    expect((await cli(["token", "revoke", last.id])).code).toBe(0);
    await waitFor("the worker to be disconnected", async () => !(await connected("t-tls-1")));
    await waitFor("the worker to say why", () => again.log().includes("CERTIFICATE_REVOKED"));
    await again.kill("SIGTERM");
  });

  test("a worker renews its certificate before it ends, with no one's help, and a job running across it finishes", async () => {
    using short = tempDir();
    const p = freePort();
    const u = `https://127.0.0.1:${p}`;
    const m = spawnRole(["master", "--tls", "--data", join(short.path, "m"), "--listen", `127.0.0.1:${p}`], {
      cwd: short.path,
      env: { KILN_MASTER_TLS_WORKER_LIFETIME: "15s" },
      name: "short-master",
    });
    const c = join(short.path, "m", "tls", "ca.crt");
    const env = { KILN_CA: c, KILN_URL: u, KILN_TOKEN: "" };
    await waitFor("the short-lived master", async () => {
      if (m.proc.exitCode !== null) throw new Error(m.log());
      return (await fetch(`${u}/readyz`, { tls: { ca: readFileSync(c, "utf8") } })).ok;
    });
    const tok = await kiln(["token", "create", "--role", "worker", "--data", join(short.path, "m")], {
      cwd: short.path,
      env,
    });
    const w = spawnRole(
      ["worker", "--master", u, "--runner", "process", "--name", "t-tls-4", "--data", join(short.path, "w")],
      { cwd: short.path, env: { KILN_JOIN: tok.stdout.trim() }, name: "t-tls-4" },
    );
    const job = kiln(
      ["submit", "--wait", "--data", join(short.path, "m"), "--", "sh", "-c", "sleep 14; echo survived"],
      {
        cwd: short.path,
        env,
      },
    );
    await waitFor("two renewals", () => count(m.log(), "renewed worker t-tls-4") >= 2, 60_000);
    const done = await job;
    expect([done.code, done.stdout.trim()]).toEqual([0, "survived"]);
    expect(w.log()).not.toContain("lost the master");
    await w.kill("SIGTERM");
    await m.kill("SIGTERM");
  });
});

test("kiln up --tls runs a job: its own worker enrolls, and the CLI on its host trusts the CA in its data dir", async () => {
  using here = tempDir();
  const p = freePort();
  const d = join(here.path, "data");
  const up = spawnRole(["up", "--tls", "--data", d, "--listen", `0.0.0.0:${p}`, "--runner", "process"], {
    cwd: here.path,
    name: "up",
  });
  const env = { KILN_URL: `https://127.0.0.1:${p}` };
  await waitFor("the local worker", async () => {
    if (up.proc.exitCode !== null) throw new Error(up.log());
    const r = await kiln(["workers", "--json", "--data", d], { cwd: here.path, env });
    return r.code === 0 && (JSON.parse(r.stdout) as { connected: boolean }[])[0]?.connected;
  });
  const r = await kiln(["submit", "--wait", "--data", d, "--", "echo", "up-over-tls"], {
    cwd: here.path,
    env,
  });
  expect([r.code, r.stdout.trim()]).toEqual([0, "up-over-tls"]);
  await up.kill("SIGTERM");
  // Restarted, it keeps its worker's certificate.
  const again = spawnRole(["up", "--tls", "--data", d, "--listen", `0.0.0.0:${p}`, "--runner", "process"], {
    cwd: here.path,
    name: "up-again",
  });
  await waitFor("the local worker again", () => again.log().includes("connected ("));
  expect(again.log()).not.toContain("joining");
  await again.kill("SIGTERM");
});

test("enrollment refuses an unknown join token, logging who and why", async () => {
  const key = join(dir.path, "enroll.key");
  const made = Bun.spawnSync(
    [
      "openssl",
      "req",
      "-new",
      "-newkey",
      "ec",
      "-pkeyopt",
      "ec_paramgen_curve:P-256",
      "-nodes",
      "-keyout",
      key,
      "-subj",
      "/CN=t-tls-5",
    ],
    { stderr: "pipe" },
  );
  const res = await fetch(`${url}/api/v1/tls/enroll`, {
    method: "POST",
    body: JSON.stringify({ secret: "x".repeat(43), csr: made.stdout.toString() }),
    tls: { ca },
  });
  expect(res.status).toBe(401);
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe("JOIN_TOKEN_UNKNOWN");
  await waitFor("the refusal in the log", () =>
    master.log().includes("refused /api/v1/tls/enroll for worker t-tls-5 from 127.0.0.1: JOIN_TOKEN_UNKNOWN"),
  );
});

test("an operator's certificate whose key does not match stops the master with what is wrong", async () => {
  using other = tempDir();
  const d = join(other.path, "data");
  // A valid pair from a first start, then the key swapped for the CA's: the message names both files.
  writeFileSync(join(other.path, "cert.pem"), readFileSync(join(data, "tls", "server.crt"), "utf8") + ca);
  writeFileSync(join(other.path, "key.pem"), readFileSync(join(data, "tls", "ca.key"), "utf8"));
  const r = await kiln(["master", "--tls", "--data", d, "--listen", `127.0.0.1:${freePort()}`], {
    cwd: other.path,
    env: {
      KILN_MASTER_TLS_CERT: join(other.path, "cert.pem"),
      KILN_MASTER_TLS_KEY: join(other.path, "key.pem"),
    },
  });
  expect(r.code).not.toBe(0);
  expect(r.stderr).toContain(
    `master.tls_key ${join(other.path, "key.pem")} is not the key of the first certificate`,
  );
});

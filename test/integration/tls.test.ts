import { afterAll, beforeAll, expect, test } from "bun:test";
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
 * `[master] tls = true` on the compiled binary: the master creates its CA and serves HTTPS and WSS on its
 * one port. Until the client commands take --ca and workers enroll with join tokens, they trust the CA
 * through NODE_EXTRA_CA_CERTS, which is what this test does to run a job over TLS end to end.
 */

const dir = tempDir();
const data = join(dir.path, "data");
const port = freePort();
const url = `https://127.0.0.1:${port}`;
let master: Role;
let ca: string;
let token: string;

beforeAll(async () => {
  master = spawnRole(["master", "--data", data, "--listen", `127.0.0.1:${port}`], {
    cwd: dir.path,
    env: { KILN_MASTER_TLS: "true", KILN_MASTER_TLS_NAMES: "127.0.0.1,localhost" },
    name: "master",
  });
  ca = await waitFor("the CA", () => {
    if (master.proc.exitCode !== null) throw new Error(`master exited: ${master.log()}`);
    try {
      return readFileSync(join(data, "tls", "ca.crt"), "utf8");
    } catch {
      return "";
    }
  });
  await waitFor("the master over https", async () => (await fetch(`${url}/readyz`, { tls: { ca } })).ok);
  token = readFileSync(join(data, "admin.token"), "utf8").trim();
});
afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

test("the master serves HTTPS with a certificate from its own CA, keys 0600, and no plain HTTP", async () => {
  expect(statSync(join(data, "tls")).mode & 0o777).toBe(0o700);
  expect(statSync(join(data, "tls", "ca.key")).mode & 0o777).toBe(0o600);
  expect(statSync(join(data, "tls", "server.key")).mode & 0o777).toBe(0o600);
  expect(await (await fetch(`${url}/api/v1/tls/ca`, { tls: { ca } })).text()).toBe(ca);
  const plain = await fetch(`http://127.0.0.1:${port}/readyz`).then(
    (r) => r.status,
    () => "refused",
  );
  expect(plain).not.toBe(200);
  // Without the CA the client refuses the master instead of trusting it on first use.
  const blind = await kiln(["workers"], { cwd: dir.path, env: { KILN_URL: url, KILN_TOKEN: token } });
  expect(blind.code).not.toBe(0);
  expect(blind.stderr).toContain("self signed certificate in certificate chain");
  expect(master.log()).toContain(`master listening on https://127.0.0.1:${port}`);
});

test("a worker and the client commands that trust the CA run a job over HTTPS and WSS", async () => {
  const env = { NODE_EXTRA_CA_CERTS: join(data, "tls", "ca.crt"), KILN_URL: url, KILN_TOKEN: token };
  // Workers join with a worker token: the worker protocol takes no client token, the admin's included.
  const made = await kiln(["token", "create", "--role", "worker"], { cwd: dir.path, env });
  expect(made.code).toBe(0);
  spawnRole(
    [
      "worker",
      "--master",
      url,
      "--join",
      made.stdout.trim(),
      "--runner",
      "process",
      "--name",
      "xa-tls-1",
      "--data",
      join(dir.path, "w"),
    ],
    { cwd: dir.path, env, name: "worker" },
  );
  await waitFor("the worker", async () =>
    (await kiln(["workers"], { cwd: dir.path, env })).stdout.includes("xa-tls-1"),
  );
  const job = await kiln(["submit", "--wait", "--", "echo", "over-tls"], { cwd: dir.path, env });
  expect(job.stdout).toContain("over-tls");
  expect(job.code).toBe(0);
});

test("enrollment is served on the same port and refuses an unknown join token, logging who and why", async () => {
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
      "/CN=xa-tls-2",
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
    master
      .log()
      .includes("refused /api/v1/tls/enroll for worker xa-tls-2 from 127.0.0.1: JOIN_TOKEN_UNKNOWN"),
  );
});

test("an operator's certificate whose key does not match stops the master with what is wrong", async () => {
  using other = tempDir();
  const d = join(other.path, "data");
  // A valid pair from a first start, then the key swapped for the CA's: the message names both files.
  writeFileSync(join(other.path, "cert.pem"), readFileSync(join(data, "tls", "server.crt"), "utf8") + ca);
  writeFileSync(join(other.path, "key.pem"), readFileSync(join(data, "tls", "ca.key"), "utf8"));
  const r = await kiln(["master", "--data", d, "--listen", `127.0.0.1:${freePort()}`], {
    cwd: other.path,
    env: {
      KILN_MASTER_TLS: "true",
      KILN_MASTER_TLS_CERT: join(other.path, "cert.pem"),
      KILN_MASTER_TLS_KEY: join(other.path, "key.pem"),
    },
  });
  expect(r.code).not.toBe(0);
  expect(r.stderr).toContain(
    `master.tls_key ${join(other.path, "key.pem")} is not the key of the first certificate`,
  );
});

import { afterEach } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { learnWorkerNames, leftoversOf, type RoleTrace } from "./leftovers.ts";

/*
 * Helpers for the integration tier: every test runs the compiled dist/kiln from a temp dir with no
 * node_modules, with a fixed environment, and everything it starts is stopped at the end. A role's
 * leftovers (processes, mounts, loop devices, cgroups: see leftovers.ts) fail the test that ended it
 * (`checkLeftoversAfterEachTest`) and `stopAll`, which every integration file calls when it is done.
 */

export const KILN = resolve(import.meta.dir, "..", "dist", "kiln");

/** A temp dir removed when disposed (`using dir = tempDir()`). */
export function tempDir(prefix = "kiln-test-", base = tmpdir()): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(base, prefix));
  return {
    path,
    [Symbol.dispose]() {
      rmSync(path, { recursive: true, force: true });
    },
  };
}

/** A fresh directory `name` under `parent` (made if missing), for one more kiln to live in. */
export function subDir(parent: string, name: string): string {
  const p = join(parent, name);
  mkdirSync(p, { recursive: true });
  return p;
}

/** The fixed environment every spawned kiln gets: nothing from the developer's shell leaks in. */
export function baseEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    HOME: process.env.HOME ?? "/root",
    LANG: "C.UTF-8",
    KILN_LOG_FORMAT: "json",
    ...extra,
  };
}

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a client command to completion. `wrap` goes before the binary: `["ip", "netns", "exec", NS]` runs
 * it on another host of a test's own network.
 */
export async function kiln(
  args: string[],
  opts: { cwd: string; env?: Record<string, string>; stdin?: string; wrap?: string[] } = { cwd: tmpdir() },
): Promise<Result> {
  const p = Bun.spawn([...(opts.wrap ?? []), KILN, ...args], {
    cwd: opts.cwd,
    env: baseEnv(opts.env),
    stdin: opts.stdin === undefined ? "ignore" : new TextEncoder().encode(opts.stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { code, stdout, stderr };
}

const started = new Set<Subprocess>();
/** Every role spawned and not yet checked for leftovers, running or ended. */
const traces = new Map<Subprocess, RoleTrace>();

/** The data dir and worker name a role's arguments give (the name is learnt later when they give none). */
function traceOf(proc: Subprocess, args: string[], cwd: string): RoleTrace {
  const flag = (f: string) => {
    const i = args.indexOf(f);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const data = flag("--data");
  const name = args[0] === "worker" || args[0] === "up" ? flag("--name") : undefined;
  return { pid: proc.pid, data: data ? resolve(cwd, data) : "", workers: new Set(name ? [name] : []) };
}

const ended = (p: Subprocess) => p.exitCode !== null || p.signalCode !== null;

/**
 * Fails, naming each thing, when roles that have ended left anything behind, after giving the kernel a
 * few seconds to finish tearing down what a dying role held. Checked roles are forgotten.
 */
async function checkEnded(): Promise<void> {
  const done = [...traces].filter(([p]) => ended(p));
  if (done.length === 0) return;
  const running = [...traces].filter(([p]) => !ended(p)).map(([, t]) => t);
  let left: string[] = [];
  try {
    await waitFor(
      "the stopped roles' leftovers to go",
      () => {
        left = leftoversOf(
          done.map(([, t]) => t),
          running,
        );
        return left.length === 0;
      },
      5_000,
      100,
    );
  } catch {
    // The timeout's message says less than the list below.
  }
  for (const [p] of done) traces.delete(p);
  if (left.length > 0)
    throw new Error(
      `kiln roles this test stopped (pids ${done.map(([p]) => p.pid).join(", ")}) left behind:\n  ${left.join("\n  ")}`,
    );
}

/**
 * Registers, in the calling test file, a check after every test: what its roles that have ended (killed,
 * crashed, stopped) left behind fails that test. Every file under test/integration calls it.
 */
export function checkLeftoversAfterEachTest(): void {
  afterEach(checkEnded);
}

/** A long-running kiln role (master, worker, up) with its output captured to a file. */
export interface Role {
  proc: Subprocess;
  logFile: string;
  kill(signal?: NodeJS.Signals): Promise<void>;
  log(): string;
}

/** Starts a role; `wrap` goes before the binary, as for kiln(). */
export function spawnRole(
  args: string[],
  opts: { cwd: string; env?: Record<string, string>; name: string; wrap?: string[] },
): Role {
  const logFile = join(opts.cwd, `${opts.name}.log`);
  const proc = Bun.spawn([...(opts.wrap ?? []), KILN, ...args], {
    cwd: opts.cwd,
    env: baseEnv(opts.env),
    stdin: "ignore",
    stdout: Bun.file(logFile),
    stderr: Bun.file(`${logFile}.err`),
  });
  started.add(proc);
  traces.set(proc, traceOf(proc, args, opts.cwd));
  return {
    proc,
    logFile,
    async kill(signal = "SIGKILL") {
      proc.kill(signal);
      await proc.exited;
      started.delete(proc);
    },
    log() {
      try {
        return readFileSync(`${logFile}.err`, "utf8") + readFileSync(logFile, "utf8");
      } catch {
        return "";
      }
    },
  };
}

/**
 * Stops every role still running and returns how many there were (a test that leaked one fails); then
 * throws, naming each, if any role of the file left a process, mount, loop device or cgroup behind.
 */
export async function stopAll(): Promise<number> {
  learnWorkerNames([...traces.values()]);
  const n = started.size;
  // A clean stop first: a worker then removes its cgroups; SIGKILL only for one that hangs.
  for (const p of started) p.kill("SIGTERM");
  await Promise.all(
    [...started].map((p) =>
      Promise.race([p.exited, Bun.sleep(10_000).then(() => p.kill("SIGKILL"))]).then(() => p.exited),
    ),
  );
  started.clear();
  await checkEnded();
  return n;
}

/** Polls `cond` until it returns a truthy value, or throws after `ms` with `what` in the message. */
export async function waitFor<T>(
  what: string,
  cond: () => Promise<T> | T,
  ms = 20_000,
  every = 25,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await cond();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ""}`);
    await Bun.sleep(every);
  }
}

/** Collects a stream's text as it arrives: `text()` is what came so far, `done` resolves at its end. */
export function readAll(stream: ReadableStream<Uint8Array>): { text(): string; done: Promise<string> } {
  let so = "";
  const decoder = new TextDecoder();
  const done = (async () => {
    for await (const chunk of stream) so += decoder.decode(chunk, { stream: true });
    return so;
  })();
  return { text: () => so, done };
}

/** Picks a free loopback port by binding port 0 and closing it. */
export function freePort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

/** A master (or `up`) started in `dir` and ready to serve, with its admin token. */
export interface Master extends Role {
  url: string;
  token: string;
  /** A worker token of this master (made on first use): workers join with it, never the admin token. */
  workerToken(): Promise<string>;
  data: string;
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  cli(args: string[], extraEnv?: Record<string, string>): Promise<Result>;
}

export async function startMaster(
  dir: string,
  opts: {
    role?: "master" | "up";
    args?: string[];
    env?: Record<string, string>;
    port?: number;
    name?: string;
  } = {},
): Promise<Master> {
  const port = opts.port ?? freePort();
  const data = join(dir, "data");
  const role = spawnRole(
    [opts.role ?? "master", "--data", data, "--listen", `127.0.0.1:${port}`, ...(opts.args ?? [])],
    {
      cwd: dir,
      env: opts.env,
      name: opts.name ?? opts.role ?? "master",
    },
  );
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `the master on ${url}`,
    async () => {
      if (role.proc.exitCode !== null) throw new Error(`master exited ${role.proc.exitCode}: ${role.log()}`);
      return (await fetch(`${url}/readyz`)).ok;
    },
    20_000,
  );
  const token = readFileSync(join(data, "admin.token"), "utf8").trim();
  let workerToken: Promise<string> | null = null;
  return {
    ...role,
    url,
    token,
    workerToken() {
      workerToken ??= (async () => {
        const res = await fetch(`${url}/api/v1/admin/tokens`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ role: "worker", name: "test-workers" }),
        });
        if (res.status !== 201)
          throw new Error(`cannot make a worker token: ${res.status} ${await res.text()}`);
        return ((await res.json()) as { token: string }).token;
      })();
      return workerToken;
    },
    data,
    async api<T>(method: string, path: string, body?: unknown) {
      const res = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
    },
    cli(args: string[], extraEnv: Record<string, string> = {}) {
      return kiln(args, { cwd: dir, env: { KILN_URL: url, KILN_TOKEN: token, ...extraEnv } });
    },
  };
}

/** Starts `kiln worker` against `master` and waits until the master lists it as connected. */
export async function startWorker(
  master: Master,
  dir: string,
  name: string,
  opts: {
    capacity?: number;
    channels?: string;
    env?: Record<string, string>;
    args?: string[];
    data?: string;
  } = {},
): Promise<Role> {
  const role = spawnRole(
    [
      "worker",
      "--master",
      master.url,
      "--join",
      await master.workerToken(),
      "--name",
      name,
      "--data",
      opts.data ?? join(dir, `worker-${name}`),
      "--capacity",
      String(opts.capacity ?? 2),
      ...(opts.channels ? ["--channels", opts.channels] : []),
      ...(opts.args ?? []),
    ],
    { cwd: dir, env: opts.env, name: `worker-${name}` },
  );
  await waitFor(`worker ${name} to connect`, async () => {
    if (role.proc.exitCode !== null) throw new Error(`worker exited ${role.proc.exitCode}: ${role.log()}`);
    const { body } = await master.api<{ name: string; connected: boolean }[]>("GET", "/api/v1/workers");
    return body.some((w) => w.name === name && w.connected);
  });
  return role;
}

export interface JobJson {
  id: number;
  state: string;
  reason: string | null;
  exitCode: number | null;
  worker: string | null;
  attempt: number;
  startedAt: string | null;
  finishedAt: string | null;
  logSize: number;
  waitingFor: string | null;
  message: string | null;
}

export const TERMINAL = ["succeeded", "failed", "cancelled", "timed_out"];

/** Waits until job `id` has ended and returns it. */
export function waitJob(master: Master, id: number, ms = 30_000): Promise<JobJson> {
  return waitFor(
    `job ${id} to end`,
    async () => {
      const { body } = await master.api<JobJson>("GET", `/api/v1/jobs/${id}`);
      return TERMINAL.includes(body.state) ? body : null;
    },
    ms,
  );
}

/** Submits through the API and returns the id. */
export async function submitJob(master: Master, body: Record<string, unknown>): Promise<number> {
  const res = await master.api<{ id: number }>("POST", "/api/v1/jobs", body);
  if (res.status !== 201) throw new Error(`submit failed: ${JSON.stringify(res.body)}`);
  return res.body.id;
}

/** Pids of live processes whose command line contains `marker`. */
export function pidsMatching(marker: string): number[] {
  const out = Bun.spawnSync(["pgrep", "-f", marker]).stdout.toString().trim();
  return out
    ? out
        .split("\n")
        .map(Number)
        .filter((p) => p !== process.pid)
    : [];
}

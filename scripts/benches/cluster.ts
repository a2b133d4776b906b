// Starts the compiled kiln for a benchmark: `kiln up`, or a master and a separate worker (so each has
// its own RSS), on a random loopback port, and waits until the worker is connected. With `tls` the master
// serves HTTPS and WSS, the worker joins with a join token and connects with its certificate, and the
// benchmark's own requests verify the master against its CA, as a user's would.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const KILN = resolve(import.meta.dir, "..", "..", "dist", "kiln");

export interface Cluster {
  /** The master's base URL (plain HTTP unless started with tls). */
  url: string;
  masterPid: number;
  workerPid: number;
  api<T = Record<string, unknown>>(method: string, path: string, body?: unknown): Promise<T>;
  stop(): Promise<void>;
}

const until = async (cond: () => Promise<boolean>) => {
  while (!(await cond().catch(() => false))) await Bun.sleep(10);
};

/** Total RSS and its private (anonymous) part of a process, in bytes. */
export function rss(pid: number): { total: number; anon: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)![1]) * 1024;
  return { total: kb("VmRSS"), anon: kb("RssAnon") };
}

export async function startCluster(
  dir: string,
  o: {
    up?: boolean;
    capacity: number;
    runner?: "process" | "sandbox";
    tls?: boolean;
    /** The worker's log level and where its log goes (default: warn, to this process's stderr). */
    workerLog?: { level: string; file: string };
  },
): Promise<Cluster> {
  const port = 17000 + Math.floor(Math.random() * 5000);
  const url = `${o.tls ? "https" : "http"}://127.0.0.1:${port}`;
  const env = {
    PATH: process.env.PATH!,
    KILN_LOG_FORMAT: "json",
    KILN_LOG_LEVEL: "warn",
    KILN_WORKER_RUNNER: o.runner ?? "sandbox",
  };
  const spawn = (args: string[], log?: { level: string; file: string }) =>
    Bun.spawn([KILN, ...args], {
      env: log ? { ...env, KILN_LOG_LEVEL: log.level } : env,
      stdout: "ignore",
      stderr: log ? Bun.file(log.file) : "inherit",
    });
  const listen = ["--data", join(dir, "m"), "--listen", `127.0.0.1:${port}`, ...(o.tls ? ["--tls"] : [])];
  const master = spawn(o.up ? ["up", ...listen, "--capacity", String(o.capacity)] : ["master", ...listen]);
  let tls: { ca: string } | undefined;
  await until(async () => {
    if (o.tls) tls = { ca: readFileSync(join(dir, "m", "tls", "ca.crt"), "utf8") };
    return (await fetch(`${url}/readyz`, { tls })).ok;
  });
  const token = readFileSync(join(dir, "m", "admin.token"), "utf8").trim();
  const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
  const api = async <T>(method: string, path: string, body?: unknown) =>
    (await (
      await fetch(`${url}${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined, tls })
    ).json()) as T;
  // Over TLS the worker joins with a join token; over plain HTTP with a worker token (the master takes
  // no client token on the worker socket).
  const joinWith = o.up
    ? ""
    : (await api<{ token: string }>("POST", "/api/v1/admin/tokens", { role: "worker" })).token;
  const worker = o.up
    ? master
    : spawn(
        [
          "worker",
          "--master",
          url,
          "--join",
          joinWith,
          "--name",
          // A worker name is unique on a host: two benches running at once must not refuse each other.
          `bench-${process.pid}`,
          "--capacity",
          String(o.capacity),
          "--data",
          join(dir, "w"),
        ],
        o.workerLog,
      );
  await until(
    async () => (await api<{ connected: boolean }[]>("GET", "/api/v1/workers"))[0]?.connected === true,
  );
  return {
    url,
    masterPid: master.pid,
    workerPid: worker.pid,
    api,
    async stop() {
      for (const p of new Set([worker, master])) p.kill("SIGTERM");
      await Promise.all([worker.exited, master.exited]);
    },
  };
}

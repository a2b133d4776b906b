import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { loadConfig, type Overrides } from "../config/load.ts";
import { dataDir } from "../config/paths.ts";
import type { Config } from "../config/schema.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { logger, setupLogging } from "../lib/log.ts";
import { reexecWith } from "../lib/reexec.ts";
import { bearerAuth, type MasterAuth } from "../protocol/master-auth.ts";

/*
 * The life of a role process (`kiln master`, `worker`, `up`): load the config once, set up logging and
 * the data dir, start the parts, wire what one part needs from another (the runner a worker uses, the
 * master URL a local worker joins), then run until SIGINT/SIGTERM and stop cleanly. The commands in
 * roles.ts only turn flags into the options below.
 */

/** What a role command parsed from its flags: the config file, the flag overrides, and -n's echo. */
export interface RoleOptions {
  configFile?: string;
  flags: Overrides;
  /** Echo job output to the terminal (debug mode, -n). */
  echo: boolean;
}

/** Runs the master until SIGINT/SIGTERM, then stops it cleanly; exits non-zero if one of its loops died. */
export async function runMaster(options: RoleOptions): Promise<void> {
  const { cfg, data } = setup(options);
  const { startMaster } = await import("../master/index.ts");
  const m = await startMaster(cfg, data);
  await serve("master", [m]);
}

/** Runs a worker for the configured master until SIGINT/SIGTERM (a second signal stops waiting for jobs). */
export async function runWorker(options: RoleOptions): Promise<void> {
  const { cfg, data } = setup(options);
  const { startWorker } = await import("../worker/index.ts");
  const auth = await workerAuth(cfg, data, cfg.worker.join || undefined);
  const w = await startWorker({
    cfg,
    data,
    auth,
    runner: await runner(cfg, data, auth),
    echo: options.echo,
  });
  await serve("worker", [w]);
}

/** Runs a master and one local worker joined to it in this process, until SIGINT/SIGTERM. */
export async function runUp(options: RoleOptions): Promise<void> {
  const { cfg, data } = setup(options);
  const { startMaster, localWorkerToken } = await import("../master/index.ts");
  const { startWorker } = await import("../worker/index.ts");
  const m = await startMaster(cfg, data);
  // The local worker joins the address this master actually listens on (a port of 0 becomes a real port;
  // a wildcard becomes loopback), not worker.master from the config.
  cfg.worker.master = m.localUrl;
  let auth: MasterAuth;
  if (m.ctx.tls) {
    // Its own worker enrolls like any other, with a join token this process makes when it needs one.
    const { localWorkerJoinToken } = await import("../master/tls.ts");
    const { identityDir } = await import("../worker/certificate.ts");
    const { workerName } = await import("../worker/identity.ts");
    const join = await localWorkerJoinToken(m.ctx, workerName(cfg, data), identityDir(data));
    auth = await workerAuth(cfg, data, join);
  } else {
    // The local worker joins with a worker token of this master's own (DATA/worker.token): a KILN_TOKEN in
    // the environment is for client commands, may belong to another master, and the worker protocol
    // takes no client token.
    auth = bearerAuth(cfg.worker.join || (await localWorkerToken(m)));
  }
  const w = await startWorker({
    cfg,
    data,
    auth,
    runner: await runner(cfg, data, auth),
    echo: options.echo,
  });
  await serve("up", [w, m]);
}

/** Resolves config (defaults < file < env < flags), sets up logging and the data dir. */
function setup(options: RoleOptions): { cfg: Config; data: string } {
  const cfg = loadConfig({ file: options.configFile, flags: options.flags });
  setupLogging(cfg.log.format as never, cfg.log.level as never);
  const data = dataDir(cfg);
  mkdirSync(data, { recursive: true, mode: 0o700 });
  // The embedded libSQL addon is extracted to BUN_TMPDIR at first use; /tmp is often noexec on servers.
  if (!process.env.BUN_TMPDIR) {
    const tmp = join(data, "tmp");
    mkdirSync(tmp, { recursive: true, mode: 0o700 });
    reexecWith({ BUN_TMPDIR: tmp });
    logger("kiln").warn(
      `could not re-execute with BUN_TMPDIR=${tmp}; the store library unpacks to the default temp dir`,
    );
  }
  return { cfg, data };
}

/** Runs a role until SIGINT/SIGTERM, then stops it cleanly; exits non-zero if a loop died. */
async function serve(
  name: string,
  parts: { stop(): Promise<void>; forceStop?(): void; done: Promise<void> }[],
) {
  const log = logger(name);
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) {
      // A second signal: a draining worker stops waiting for its jobs.
      for (const p of parts) p.forceStop?.();
      return;
    }
    stopping = true;
    log.info(`${sig}: stopping`);
    await Promise.allSettled(parts.map((p) => p.stop()));
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  try {
    await Promise.all(parts.map((p) => p.done));
  } catch (err) {
    log.error(`stopped: ${coerceError(err).message}`);
    process.exit(1);
  }
  if (!stopping) {
    log.error("a background loop stopped unexpectedly");
    process.exit(1);
  }
}

/**
 * The worker's credentials: towards an https:// master its certificate (kept in the data dir, or joined
 * with `join`), else a bearer token.
 */
async function workerAuth(cfg: Config, data: string, join: string | undefined): Promise<MasterAuth> {
  if (cfg.worker.master.startsWith("https://")) {
    const { certificateAuth, identityDir } = await import("../worker/certificate.ts");
    const { workerName } = await import("../worker/identity.ts");
    return certificateAuth({
      masterUrl: cfg.worker.master,
      dir: identityDir(data),
      name: workerName(cfg, data),
      join,
      log: logger("worker"),
    });
  }
  if (join?.startsWith("kiln1."))
    throw new AppError(
      "USAGE",
      `a join token enrolls over TLS only: give the master's https:// URL with --master (not ${cfg.worker.master})`,
    );
  return bearerAuth(await workerToken(cfg, data));
}

// The token a worker joins with: worker.join, else KILN_TOKEN, else the worker token `kiln up` keeps in
// this data dir. Never the admin token: the master takes only worker tokens on the worker socket.
async function workerToken(cfg: Config, data: string): Promise<string> {
  if (cfg.worker.join) return cfg.worker.join;
  if (process.env.KILN_TOKEN) return process.env.KILN_TOKEN;
  const file = join(data, "worker.token");
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  throw new AppError(
    "USAGE",
    `no token to join ${cfg.worker.master}: pass --join TOKEN (from \`kiln token create --role worker\`)`,
  );
}

// The runner the worker's config asks for; the sandbox runner is loaded only when used (it needs root).
async function runner(cfg: Config, data: string, auth: MasterAuth) {
  if (cfg.worker.runner === "process") {
    const { createProcessRunner } = await import("../worker/process-runner.ts");
    return createProcessRunner();
  }
  const { createSandboxRunner } = await import("../sandbox/runner.ts");
  const { workerName } = await import("../worker/identity.ts");
  // What a job on the host root must never see: every Kiln data dir and config, whatever this node uses.
  const masks = [...new Set([resolve(data), "/var/lib/kiln", "/etc/kiln", ...cfg.sandbox.mask])];
  return createSandboxRunner({ cfg, data, worker: workerName(cfg, data), masks, auth });
}

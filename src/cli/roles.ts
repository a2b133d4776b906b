import { mkdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { defineCommand } from "citty";
import { loadConfig, type Overrides } from "../config/load.ts";
import { adminTokenPath, dataDir } from "../config/paths.ts";
import type { Config } from "../config/schema.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { logger, setupLogging } from "../lib/log.ts";
import { reexecWith } from "../lib/reexec.ts";
import { checkFlags } from "./common.ts";

const common = {
  config: { type: "string", description: "TOML config file (see appliance/kiln.toml)", valueHint: "FILE" },
  data: { type: "string", description: "Data dir (default /var/lib/kiln as root)", valueHint: "DIR" },
  "log-format": {
    type: "string",
    description: "human or json (default: human on a terminal)",
    valueHint: "FORMAT",
  },
  "log-level": { type: "string", description: "error, warn, info, debug or trace", valueHint: "LEVEL" },
  n: {
    type: "boolean",
    description: "Debug mode: foreground, debug logs, job output echoed to the terminal",
  },
} as const;
const masterFlags = {
  listen: {
    type: "string",
    description: "HOST:PORT for the API and worker websocket (default 127.0.0.1:7070)",
    valueHint: "HOST:PORT",
  },
  db: {
    type: "string",
    description: "libSQL URL (default: an embedded file in the data dir)",
    valueHint: "URL",
  },
} as const;
const NAME_RULE = "1-63 lowercase letters, digits, . _ -";
/** Flags of the local worker, which `up` runs beside its master too. */
const localWorkerFlags = {
  name: {
    type: "string",
    description: `Worker name, ${NAME_RULE} (default: the host name, plus a hash of a non-default --data)`,
    valueHint: "NAME",
  },
  channels: {
    type: "string",
    description: `Channels served, comma-separated, each ${NAME_RULE} (default: default)`,
    valueHint: "A,B",
  },
  capacity: { type: "string", description: "Number of slots (jobs at once)", valueHint: "N" },
  arch: {
    type: "string",
    description: "Architecture offered to jobs, in Debian's names (default: this machine's)",
    valueHint: "ARCH",
  },
  runner: {
    type: "string",
    description: "sandbox (as root: namespaces, cgroups, scratch) or process (no isolation)",
    valueHint: "RUNNER",
  },
} as const;
/** Flags of a worker that joins a master elsewhere. */
const workerFlags = {
  master: { type: "string", description: "Master URL (default http://127.0.0.1:7070)", valueHint: "URL" },
  join: {
    type: "string",
    description:
      "Worker token from `kiln token create --role worker` (or env KILN_WORKER_JOIN, or --join-file)",
    valueHint: "TOKEN",
  },
  "join-file": {
    type: "string",
    description: "Read the worker token from this file, so it does not show in ps",
    valueHint: "FILE",
  },
  ...localWorkerFlags,
} as const;

type Args = Record<string, string | boolean | undefined>;

/** The token in `file` (--join-file), trimmed; a file that cannot be read is a usage error. */
function joinFromFile(file: string | undefined): string | undefined {
  if (file === undefined) return undefined;
  try {
    const t = readFileSync(file, "utf8").trim();
    if (!t) throw new Error("the file is empty");
    return t;
  } catch (err) {
    throw new AppError("USAGE", `--join-file ${file}: ${coerceError(err).message}`);
  }
}

/** Resolves config (defaults < file < env < flags), sets up logging and the data dir. */
function setup(a: Args): { cfg: Config; data: string } {
  const flags: Overrides = {
    node: { data: a.data as string | undefined },
    log: { format: a["log-format"] as never, level: (a.n ? "debug" : a["log-level"]) as never },
    master: { listen: a.listen as string | undefined, db: a.db as string | undefined },
    worker: {
      master: a.master as string | undefined,
      name: a.name as string | undefined,
      channels: a.channels as never,
      capacity: a.capacity as never,
      arch: a.arch as string | undefined,
      runner: a.runner as never,
      join: (a.join as string | undefined) ?? joinFromFile(a["join-file"] as string | undefined),
    },
  };
  const cfg = loadConfig({ file: a.config as string | undefined, flags });
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

async function workerToken(cfg: Config, data: string, masterUrl?: string): Promise<string> {
  if (cfg.worker.join) return cfg.worker.join;
  const { resolveToken } = await import("./client.ts");
  const t = resolveToken({ data });
  if (!t) {
    throw new AppError(
      "USAGE",
      `no token to join ${masterUrl ?? cfg.worker.master}: pass --join TOKEN (from \`kiln token create --role worker\`)`,
    );
  }
  return t;
}

async function runner(cfg: Config, data: string, token: string) {
  if (cfg.worker.runner === "process") {
    const { createProcessRunner } = await import("../worker/process-runner.ts");
    return createProcessRunner();
  }
  const { createSandboxRunner } = await import("../sandbox/runner.ts");
  const { workerName } = await import("../worker/identity.ts");
  // What a job on the host root must never see: every Kiln data dir and config, whatever this node uses.
  const masks = [...new Set([resolve(data), "/var/lib/kiln", "/etc/kiln", ...cfg.sandbox.mask])];
  return createSandboxRunner({ cfg, data, worker: workerName(cfg, data), masks, token });
}

export const master = defineCommand({
  meta: { name: "master", description: "Run the control plane: queue, dispatch, API, worker websocket" },
  args: { ...common, ...masterFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...masterFlags });
    const { cfg, data } = setup(ctx.args as Args);
    const { startMaster } = await import("../master/index.ts");
    const m = await startMaster(cfg, data);
    await serve("master", [m]);
  },
});

export const worker = defineCommand({
  meta: { name: "worker", description: "Run jobs for a master: kiln worker --master URL --join TOKEN" },
  args: { ...common, ...workerFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...workerFlags });
    const { cfg, data } = setup(ctx.args as Args);
    const { startWorker } = await import("../worker/index.ts");
    const token = await workerToken(cfg, data);
    const w = await startWorker({
      cfg,
      data,
      token,
      runner: await runner(cfg, data, token),
      echo: Boolean(ctx.args.n),
    });
    await serve("worker", [w]);
  },
});

export const up = defineCommand({
  meta: { name: "up", description: "Run a master and one local worker in one process" },
  args: { ...common, ...masterFlags, ...localWorkerFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...masterFlags, ...localWorkerFlags });
    const { cfg, data } = setup(ctx.args as Args);
    const { startMaster } = await import("../master/index.ts");
    const { startWorker } = await import("../worker/index.ts");
    const m = await startMaster(cfg, data);
    cfg.worker.master = m.url;
    // The local worker joins with this master's own admin token: a KILN_TOKEN in the environment is for
    // client commands, and may belong to another master.
    const token = cfg.worker.join || readFileSync(adminTokenPath(data), "utf8").trim();
    const w = await startWorker({
      cfg,
      data,
      token,
      runner: await runner(cfg, data, token),
      echo: Boolean(ctx.args.n),
    });
    await serve("up", [w, m]);
  },
});

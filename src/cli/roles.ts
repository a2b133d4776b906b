import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import type { Overrides } from "../config/load.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { checkFlags } from "./common.ts";
import { type RoleOptions, runMaster, runUp, runWorker } from "./serve.ts";

/*
 * The role commands (`kiln master`, `worker`, `up`): their flags, and the flags turned into config
 * overrides. What a role process does with them, from loading the config to stopping on a signal, is
 * serve.ts.
 */

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
  tls: {
    type: "boolean",
    description: "Serve HTTPS and WSS, with Kiln's own CA in DATA/tls unless tls_cert/tls_key are set",
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
      "Join token from `kiln token create --role worker` (or --join-file, or env KILN_JOIN); used once, then the certificate it got is kept in DATA",
    valueHint: "TOKEN",
  },
  "join-file": {
    type: "string",
    description: "Read the join token from this file, so it does not show in ps",
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

/** A role command's flags as serve.ts takes them: flags override the file and the environment. */
function roleOptions(a: Args): RoleOptions {
  const flags: Overrides = {
    node: { data: a.data as string | undefined },
    log: { format: a["log-format"] as never, level: (a.n ? "debug" : a["log-level"]) as never },
    // Only a --tls given turns TLS on here; its absence leaves the file's and the environment's word.
    master: {
      listen: a.listen as string | undefined,
      db: a.db as string | undefined,
      tls: a.tls ? true : undefined,
    },
    worker: {
      master: a.master as string | undefined,
      name: a.name as string | undefined,
      channels: a.channels as never,
      capacity: a.capacity as never,
      arch: a.arch as string | undefined,
      runner: a.runner as never,
      // KILN_JOIN, like --join-file, keeps the token out of `ps`; it counts as a flag, after them.
      join:
        (a.join as string | undefined) ??
        joinFromFile(a["join-file"] as string | undefined) ??
        (process.env.KILN_JOIN || undefined),
    },
  };
  return { configFile: a.config as string | undefined, flags, echo: Boolean(a.n) };
}

/** `kiln master`: runs the control plane until a signal stops it. */
export const master = defineCommand({
  meta: { name: "master", description: "Run the control plane: queue, dispatch, API, worker websocket" },
  args: { ...common, ...masterFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...masterFlags });
    await runMaster(roleOptions(ctx.args as Args));
  },
});

/** `kiln worker`: runs jobs for a master until a signal stops it. */
export const worker = defineCommand({
  meta: { name: "worker", description: "Run jobs for a master: kiln worker --master URL --join TOKEN" },
  args: { ...common, ...workerFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...workerFlags });
    await runWorker(roleOptions(ctx.args as Args));
  },
});

/** `kiln up`: a master and one local worker in one process, until a signal stops them. */
export const up = defineCommand({
  meta: { name: "up", description: "Run a master and one local worker in one process" },
  args: { ...common, ...masterFlags, ...localWorkerFlags },
  async run(ctx) {
    checkFlags(ctx, { ...common, ...masterFlags, ...localWorkerFlags });
    await runUp(roleOptions(ctx.args as Args));
  },
});

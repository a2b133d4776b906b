import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { dataDir } from "../config/paths.ts";
import type { Config } from "../config/schema.ts";
import { AppError } from "../lib/errors.ts";
import { holdLock, type Lock } from "../lib/lock.ts";
import { isName } from "../lib/names.ts";

/*
 * Who a worker is: its name (unique on its host, held by a lock while it runs), the instance id kept in
 * its data dir (so the master tells a reconnect from another worker of the same name), and its arch.
 */

/**
 * The worker's name: worker.name, else the host name made into a valid name, followed by a short hash of
 * the data dir unless it is the default one, so two workers of one host with their own data dirs never
 * share a name (cgroups, slot uids and the start-up sweep are keyed by it).
 */
export function workerName(cfg: Config, data: string): string {
  if (cfg.worker.name) return cfg.worker.name;
  const host =
    hostname()
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, "-")
      .replace(/^-+/, "")
      .slice(0, 48) || "worker";
  if (resolve(data) === resolve(dataDir({ node: { data: "" } }))) return host;
  return `${host}-${new Bun.CryptoHasher("sha256").update(resolve(data)).digest("hex").slice(0, 6)}`;
}

/**
 * Refuses, at start, a worker name or channel that the master would refuse on every connection, and
 * takes the host-wide lock for the name: cgroups, slot uids and the start-up sweep are keyed by it, so a
 * second worker of the same name on this host would kill the first one's jobs.
 */
export function claimIdentity(cfg: Config, name: string): Lock {
  if (!isName(name)) {
    throw new AppError(
      "USAGE",
      `worker name "${name}" is not a valid name: use 1-63 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit (--name)`,
    );
  }
  for (const c of cfg.worker.channels) {
    if (!isName(c))
      throw new AppError(
        "USAGE",
        `channel "${c}" is not a valid name: use 1-63 lowercase letters, digits, ".", "_" or "-" (--channels)`,
      );
  }
  const dir = process.getuid?.() === 0 ? "/run/kiln" : join(tmpdir(), `kiln-${process.getuid?.() ?? 0}`);
  return holdLock(
    join(dir, `worker-${name}.lock`),
    `kiln worker ${name} (pid ${process.pid}, master ${cfg.worker.master})`,
    "WORKER_NAME_IN_USE",
    (other) =>
      `worker name ${name} is in use on this host by ${other}: stop that one, or give this one another --name`,
  );
}

/** The worker's instance id, kept in its data dir so a restart is recognised as the same worker. */
export function instanceId(data: string): string {
  const file = join(data, "worker", "instance");
  try {
    return readFileSync(file, "utf8").trim();
  } catch {
    // No instance file yet: this data dir's first start. A file that cannot be written fails the start.
    const id = randomBytes(12).toString("hex");
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(file, `${id}\n`, { mode: 0o600 });
    return id;
  }
}

/** Debian's names for the machine's architecture, which package repositories use too. */
export function defaultArch(): string {
  return process.arch === "x64" ? "amd64" : process.arch;
}

import { homedir } from "node:os";
import { join, resolve } from "node:path";
import type { Config } from "./schema.ts";

/**
 * The data dir, absolute: `--data`/`node.data` (relative to the working directory), else /var/lib/kiln for root (what the service units use), else
 * ~/.local/share/kiln so an unprivileged user can try the client and `kiln up` without sudo.
 */
export function dataDir(cfg: Pick<Config, "node">): string {
  // Absolute from here on: the roles re-execute themselves and hand paths under it to other processes.
  if (cfg.node.data) return resolve(cfg.node.data);
  if (process.getuid?.() === 0) return "/var/lib/kiln";
  return join(process.env.XDG_DATA_HOME || join(homedir(), ".local", "share"), "kiln");
}

export const adminTokenPath = (data: string) => join(data, "admin.token");

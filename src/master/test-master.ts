/**
 * A master for tests that run it in process: its own temp dir, a real libSQL file, Bun.serve on a free
 * loopback port, and the admin token it made. Test code only.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../config/load.ts";
import { type RunningMaster, startMaster } from "./index.ts";

/** A running in-process master and the temp dir that holds it; stop() leaves nothing behind. */
export interface TestMaster {
  /** The temp dir; the master's data dir is `data`, the dir itself unless a sub dir was asked for. */
  dir: string;
  data: string;
  master: RunningMaster;
  /** The admin token the master wrote at its first start. */
  admin: string;
  /** Stops the master and removes the temp dir. */
  stop(): Promise<void>;
}

/** Starts a master with KILN_* settings `env` (listening on 127.0.0.1:0 unless env says otherwise). */
export async function startTestMaster(
  prefix: string,
  env: Record<string, string> = {},
  sub?: string,
): Promise<TestMaster> {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const data = sub ? join(dir, sub) : dir;
  const master = await startMaster(loadConfig({ env: { KILN_MASTER_LISTEN: "127.0.0.1:0", ...env } }), data);
  const admin = (await Bun.file(join(data, "admin.token")).text()).trim();
  return {
    dir,
    data,
    master,
    admin,
    async stop() {
      await master.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

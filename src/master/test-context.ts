import { join } from "node:path";
import { createConsola } from "consola";
import type { Config } from "../config/schema.ts";
import { localBlobStore } from "../storage/open.ts";
import type { Store } from "../store/open.ts";
import { createArtifactService } from "./artifacts.ts";
import type { MasterContext } from "./context.ts";
import { openLogStore } from "./logs.ts";
import { createRegistry } from "./registry.ts";
import { createRepoService } from "./repos.ts";
import { createSessions } from "./sessions.ts";
import { createStorageHealth } from "./storage-health.ts";

/**
 * A master context for in-process route tests (`createApp(ctx).request(...)`): a real store and log
 * store in `dir`, no workers, silent logs, and only the config the submit paths read.
 */
export function testContext(dir: string, store: Store): MasterContext {
  const quiet = createConsola({ level: -999 });
  const artifacts = createArtifactService({
    dataDir: dir,
    store,
    blobs: localBlobStore(dir),
    local: localBlobStore(dir),
    log: quiet,
  });
  return {
    cfg: { master: { default_timeout: 60_000, default_retries: 2, log_max: 2 ** 30 } } as Config,
    dataDir: dir,
    store,
    logs: openLogStore(join(dir, "logs")),
    artifacts,
    repos: createRepoService({ dataDir: dir, store, artifacts, log: quiet }),
    registry: createRegistry(),
    sessions: createSessions(),
    log: quiet,
    storage: createStorageHealth(dir, quiet),
    dispatch() {},
    dispatched: async () => {},
    startedAt: Date.now(),
    tls: null,
  };
}

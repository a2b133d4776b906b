import type { ConsolaInstance } from "consola";
import { coerceError, isDiskFull } from "../lib/errors.ts";

/**
 * Whether the master can write: its store and its job logs share one rule. While writes fail for lack
 * of space nothing the master records can be trusted to be current (heartbeats, results), so no lease
 * may expire; once writes succeed again the leases get the time the master lost. The change is logged
 * once each way, at the default level, with what to do.
 */
export interface StorageHealth {
  /** When writes started failing for lack of space; null while they succeed. */
  failingSince: number | null;
  /** True after a recovery until the lease reaper has given the leases back their time. */
  recovered: boolean;
  /** Reports the outcome of one write: null for success, else the error (only a full disk counts). */
  wrote(err: unknown): void;
}

/** A StorageHealth that starts healthy and logs each change through `log`, naming `dataDir`. */
export function createStorageHealth(dataDir: string, log: ConsolaInstance): StorageHealth {
  const h: StorageHealth = {
    failingSince: null,
    recovered: false,
    wrote(err) {
      if (err === null) {
        if (h.failingSince === null) return;
        log.info(
          `the master can write again after ${Math.round((Date.now() - h.failingSince) / 1000)} s; leases are extended by the time lost`,
        );
        h.failingSince = null;
        h.recovered = true;
        return;
      }
      if (!isDiskFull(err) || h.failingSince !== null) return;
      h.failingSince = Date.now();
      log.error(
        `the master's disk is full (data dir ${dataDir}): ${coerceError(err).message}. Nothing new is recorded and no lease expires until space is freed there; workers keep their results meanwhile`,
      );
    },
  };
  return h;
}

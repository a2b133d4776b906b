import { expiredLeases, extendActiveLeases } from "../store/jobs.ts";
import type { MasterContext } from "./context.ts";
import { loseAttempt } from "./worker-socket.ts";

/**
 * One pass of the lease reaper: every active job whose worker stopped heartbeating past its lease is
 * re-queued (while retries remain) or ends failed with reason `lost`.
 */
export async function reapLeasesOnce(ctx: MasterContext, now = Date.now()) {
  // While the master cannot write, heartbeats and results are not being recorded: silence from a worker
  // means nothing then, and no lease may run out on the time the master lost.
  if (ctx.storage.failingSince !== null) return;
  if (ctx.storage.recovered) {
    await extendActiveLeases(ctx.store, ctx.cfg.master.lease, now);
    ctx.storage.recovered = false;
    return;
  }
  for (const row of await expiredLeases(ctx.store.db, now)) {
    await loseAttempt(ctx, row, `worker ${row.worker} stopped heartbeating`);
  }
}

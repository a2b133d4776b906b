import { expiredLeases } from "../store/jobs.ts";
import type { MasterContext } from "./context.ts";
import { loseAttempt } from "./worker-socket.ts";

/**
 * One pass of the lease reaper: every active job whose worker stopped heartbeating past its lease is
 * re-queued (while retries remain) or ends failed with reason `lost`.
 */
export async function reapLeasesOnce(ctx: MasterContext, now = Date.now()) {
  for (const row of await expiredLeases(ctx.store.db, now)) {
    await loseAttempt(ctx, row, `worker ${row.worker} stopped heartbeating`);
  }
}

import { appendAudit } from "../store/audit.ts";
import type { Caller } from "./auth.ts";
import type { MasterContext } from "./context.ts";

/*
 * The audit log: who changed what. Every route that changes something a person would ask about later
 * (submit, cancel, retry, worker and slot holds, tokens, templates, recipes, releases) calls audit() once
 * the change is made. `detail` says what the target alone does not, and never holds a secret: a token's
 * secret, a --secret value or a credential is not written here, only names.
 */

/**
 * Records that `caller` did `action` (e.g. `job.cancel`) to `target` (e.g. `job/42`), in the store and,
 * at info level, in the master's log.
 */
export async function audit(
  ctx: MasterContext,
  caller: Caller,
  action: string,
  target: string,
  detail?: Record<string, unknown>,
): Promise<void> {
  await appendAudit(ctx.store, {
    at: Date.now(),
    tokenId: caller.tokenId,
    tokenName: caller.name,
    role: caller.role,
    action,
    target,
    detail: detail ?? null,
  });
  ctx.log.info(
    `audit: ${action} ${target} by token ${caller.name} (${caller.tokenId}, ${caller.role})${detail ? ` ${JSON.stringify(detail)}` : ""}`,
  );
}

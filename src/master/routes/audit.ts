import { Hono } from "hono";
import { z } from "zod";
import { badRequest } from "../../lib/errors.ts";
import { listAudit } from "../../store/audit.ts";
import type { AuditRow } from "../../store/schema.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import type { MasterContext } from "../context.ts";

/** An audit entry as the API and `kiln audit --json` show it. */
export const auditView = (r: AuditRow) => ({
  id: r.id,
  at: new Date(r.at).toISOString(),
  tokenId: r.tokenId,
  tokenName: r.tokenName,
  role: r.role,
  action: r.action,
  target: r.target,
  detail: r.detail,
});

const QUERY = z.strictObject({
  // A page of 100 by default, 1000 at most: the answer stays small whatever the table holds.
  limit: z.coerce.number().int().min(1).max(1000).default(100),
  before: z.coerce.number().int().min(1).optional(),
  // An ISO 8601 time, or milliseconds since the epoch.
  since: z.string().max(64).optional(),
});

function sinceOf(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const ms = /^\d{1,15}$/.test(text) ? Number(text) : Date.parse(text);
  if (Number.isNaN(ms))
    throw badRequest(`since: "${text}" is not a time: use ISO 8601 (2030-01-02T03:04:05Z) or epoch ms`);
  return ms;
}

/** The audit log, for admins: newest first, a page at a time; `next` is the cursor of the next page. */
export function auditRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  app.get("/audit", guard({ who: "client", role: "admin", scope: "global" }), async (c) => {
    const q = QUERY.safeParse(c.req.query());
    if (!q.success) {
      const issue = q.error.issues[0]!;
      throw badRequest(`${issue.path.join(".") || "query"}: ${issue.message}`, "INVALID_REQUEST");
    }
    const rows = await listAudit(ctx.store.db, {
      limit: q.data.limit,
      before: q.data.before,
      since: sinceOf(q.data.since),
    });
    const next = rows.length === q.data.limit ? rows[rows.length - 1]!.id : null;
    return c.json({ entries: rows.map(auditView), next });
  });
  return app;
}

import type { Context, MiddlewareHandler } from "hono";
import { AppError } from "../lib/errors.ts";
import { findToken, type Role } from "../store/tokens.ts";
import type { MasterContext } from "./context.ts";

/** Who is asking: the token's role and, for scoped tokens, its one project. */
export interface Caller {
  tokenId: string;
  name: string;
  role: Role;
  project: string | null;
}

const RANK: Record<Role, number> = { viewer: 1, submitter: 2, operator: 3, admin: 4, worker: 0 };

/** Reads the bearer token and rejects the request with 401 when it is missing, unknown, revoked or expired. */
export function authenticate(ctx: MasterContext): MiddlewareHandler<{ Variables: { caller: Caller } }> {
  return async (c, next) => {
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) {
      throw new AppError(
        "UNAUTHENTICATED",
        "a token is required: pass --token or set KILN_TOKEN (Authorization: Bearer ...)",
        {
          status: 401,
        },
      );
    }
    const row = await findToken(ctx.store.db, m[1]!);
    if (!row)
      throw new AppError(
        "UNAUTHENTICATED",
        "the token is unknown, revoked or expired: ask an admin for a new one",
        { status: 401 },
      );
    c.set("caller", { tokenId: row.id, name: row.name, role: row.role as Role, project: row.project });
    await next();
  };
}

/** Throws 403 unless the caller's role is at least `min` (workers only ever pass `worker`). */
export function requireRole(c: Context<{ Variables: { caller: Caller } }>, min: Role, project?: string) {
  const caller = c.get("caller");
  const ok =
    min === "worker" ? caller.role === "worker" || caller.role === "admin" : RANK[caller.role] >= RANK[min];
  if (!ok)
    throw new AppError("FORBIDDEN", `this needs the ${min} role; the token has ${caller.role}`, {
      status: 403,
    });
  if (project && caller.project && caller.project !== project) {
    throw new AppError("FORBIDDEN", `the token is limited to project ${caller.project}`, { status: 403 });
  }
  return caller;
}

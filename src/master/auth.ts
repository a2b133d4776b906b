import type { Context, MiddlewareHandler } from "hono";
import { AppError } from "../lib/errors.ts";
import { findToken, type Role } from "../store/tokens.ts";
import { CERT_HEADER } from "../tls/proof.ts";
import type { MasterContext } from "./context.ts";
import { certCredential } from "./tls.ts";

/** Who is asking: the token's role and, for scoped tokens, its one project. */
export interface Caller {
  tokenId: string;
  name: string;
  role: Role;
  project: string | null;
}

const RANK: Record<Role, number> = { viewer: 1, submitter: 2, operator: 3, admin: 4, worker: 0 };

/**
 * Reads the bearer token and rejects the request with 401 when it is missing, unknown, revoked or expired.
 * On a TLS master a worker is known by its certificate and proof instead (tls.ts), and a worker bearer
 * token is refused: workers there join with a join token.
 */
export function authenticate(ctx: MasterContext): MiddlewareHandler<{ Variables: { caller: Caller } }> {
  return async (c, next) => {
    if (ctx.tls && c.req.header(CERT_HEADER) !== undefined) {
      const ip = (c.env as { ip?: { address?: string } } | undefined)?.ip?.address;
      const w = await ctx.tls.identify(c.req.raw, ip);
      c.set("caller", { tokenId: certCredential(w.serial), name: w.worker, role: "worker", project: null });
      await next();
      return;
    }
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
    if (ctx.tls && row.role === "worker")
      throw new AppError(
        "WORKER_CERT_MISSING",
        "this master serves TLS: workers present their certificate, not a token; join with `kiln worker --join TOKEN` (a token from `kiln token create --role worker`)",
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

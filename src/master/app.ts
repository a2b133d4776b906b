import { Hono } from "hono";
import { AppError, coerceError, isDiskFull, storageFull } from "../lib/errors.ts";
import { type ApiEnv, type RouteRule, routesOf } from "./access.ts";
import type { MasterContext } from "./context.ts";
import { adminRoutes } from "./routes/admin.ts";
import { artifactRoutes } from "./routes/artifacts.ts";
import { auditRoutes } from "./routes/audit.ts";
import { clientRoutes } from "./routes/client.ts";
import { publicRoutes } from "./routes/public.ts";
import { recipeRoutes } from "./routes/recipes.ts";
import { releaseFileRoutes, releaseRoutes } from "./routes/releases.ts";
import { repoFileRoutes } from "./routes/repo-files.ts";
import { repoRoutes } from "./routes/repos.ts";
import { templateRoutes } from "./routes/templates.ts";

/** A 500 that says nothing about the server's insides; the details go to the master's log. */
export function internalError(): Response {
  return Response.json(
    { error: { code: "INTERNAL", message: "internal error: the master's log says what went wrong" } },
    { status: 500 },
  );
}

/** The answer for a refusal raised outside the app (the worker websocket's door): the app's error shape. */
export function errorResponse(err: AppError): Response {
  return Response.json({ error: { code: err.code, message: err.message } }, { status: err.status });
}

/**
 * The master's HTTP app. Every route declares who may call it (src/master/access.ts) and its guard
 * enforces that before the route runs. Every error leaves as `{"error":{"code","message"}}`: an AppError
 * with its own status, anything else (a bug) as a 500 that is also logged.
 */
export function createApp(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  app.onError((err, c) => {
    if (isDiskFull(err)) err = storageFull(ctx.dataDir, err);
    if (err instanceof AppError) return errorResponse(err);
    // A bug, or a failure below us: the details (paths, SQL) are for the operator's log, not the client.
    const e = coerceError(err);
    ctx.log.error(`${c.req.method} ${c.req.path}: ${e.stack ?? e.message}`);
    return internalError();
  });
  app.notFound((c) =>
    c.json({ error: { code: "NOT_FOUND", message: `no such endpoint: ${c.req.method} ${c.req.path}` } }, 404),
  );
  app.route("/", publicRoutes(ctx));
  app.route("/", releaseFileRoutes(ctx));
  app.route("/", repoFileRoutes(ctx));
  app.route("/api/v1", clientRoutes(ctx));
  app.route("/api/v1", adminRoutes(ctx));
  app.route("/api/v1", recipeRoutes(ctx));
  app.route("/api/v1", templateRoutes(ctx));
  app.route("/api/v1", artifactRoutes(ctx));
  app.route("/api/v1", releaseRoutes(ctx));
  app.route("/api/v1", auditRoutes(ctx));
  app.route("/api/v1", repoRoutes(ctx));
  return app;
}

/** The master's app as createApp builds it. */
export type App = ReturnType<typeof createApp>;

/**
 * Every route the master serves (the app's, and the worker websocket) with the rule that guards it: what
 * the access matrix test enumerates and docs/access.md lists. A route without a rule has `access: null`.
 */
export function routeTable(app: App): RouteRule[] {
  return routesOf(app as never);
}

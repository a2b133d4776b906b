import { Hono } from "hono";
import { AppError, coerceError, isDiskFull, storageFull } from "../lib/errors.ts";
import { logOnce } from "../lib/log-once.ts";
import { TLS_ROUTES } from "../tls/enroll.ts";
import { type Access, type ApiEnv, type RouteRule, routesOf, WORKER_SOCKET } from "./access.ts";
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

/** The answer to a request refused with `err`: its status and `{"error":{"code","message"}}`. */
export function refusal(err: AppError): Response {
  return Response.json({ error: { code: err.code, message: err.message } }, { status: err.status });
}

/**
 * The master's HTTP app. Every route declares who may call it (src/master/access.ts) and its guard
 * enforces that before the route runs. Every error leaves as `{"error":{"code","message"}}`: an AppError
 * with its own status, anything else (a bug) as a 500 that is also logged.
 */
export function createApp(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  // Refusals are told once per code and route, then counted (lib/log-once.ts): no flood from one client.
  const noteRefusal = logOnce((msg) => ctx.log.info(msg));
  const failed = logOnce((msg) => ctx.log.error(msg));
  app.onError((err, c) => {
    if (isDiskFull(err)) err = storageFull(ctx.dataDir, err);
    if (err instanceof AppError) {
      if (err.status < 500) {
        // Who was refused, when a guard identified them: the operator's answer to "why was my script
        // refused". Never the secret.
        const caller = c.get("caller");
        const who = caller ? ` for token ${caller.name} (${caller.tokenId}, ${caller.role})` : "";
        noteRefusal(
          `${err.code} ${c.req.method} ${c.req.routePath}`,
          `refused ${c.req.method} ${c.req.path.slice(0, 200)}${who}: ${err.status} ${err.code}: ${err.message}`,
        );
      }
      return c.json({ error: { code: err.code, message: err.message } }, err.status as 400);
    }
    // A bug, or a failure below us: the details (paths, SQL) are for the operator's log, not the client.
    const e = coerceError(err);
    failed(`${c.req.method} ${c.req.routePath}`, `${c.req.method} ${c.req.path}: ${e.stack ?? e.message}`);
    return internalError();
  });
  app.notFound((c) => {
    // A known path asked with a method it does not take: 405 with the methods it does (RFC 9110, 15.5.6).
    const allowed = allowedMethods(app.routes, c.req.path);
    if (allowed.length > 0) {
      const allow = allowed.join(", ");
      if (c.req.method === "OPTIONS") return c.body(null, 204, { allow });
      noteRefusal(
        `METHOD_NOT_ALLOWED ${c.req.method}`,
        `refused ${c.req.method} ${c.req.path.slice(0, 200)}: 405, it takes ${allow}`,
      );
      return c.json(
        {
          error: {
            code: "METHOD_NOT_ALLOWED",
            message: `${c.req.method} is not served at ${c.req.path.slice(0, 200)}: it takes ${allow}`,
          },
        },
        405,
        { allow },
      );
    }
    return c.json(
      {
        error: {
          code: "NOT_FOUND",
          message: `no such endpoint: ${c.req.method} ${c.req.path.slice(0, 200)}`,
        },
      },
      404,
    );
  });
  app.route("/", publicRoutes(ctx));
  app.route("/", releaseFileRoutes(ctx));
  app.route("/", repoFileRoutes(ctx));
  app.route("/api/v1", clientRoutes(ctx));
  app.route("/api/v1", adminRoutes(ctx));
  app.route("/api/v1", recipeRoutes(ctx));
  app.route("/api/v1", templateRoutes(ctx));
  app.route("/api/v1", artifactRoutes(ctx));
  app.route("/api/v1", releaseRoutes(ctx));
  app.route("/api/v1", repoRoutes(ctx));
  app.route("/api/v1", auditRoutes(ctx));
  return app;
}

/** The master's app as createApp builds it. */
export type App = ReturnType<typeof createApp>;

/** One route the master serves: a method and a path pattern in Hono's syntax (`:name`, `:name{regex}`). */
export interface Route {
  method: string;
  path: string;
}

// The routes the server answers before the app (src/master/index.ts): the worker websocket and, when the
// master serves TLS, enrollment (whose checks are src/tls/enroll.ts's own).
const OUTSIDE_APP: (RouteRule & { access: Access })[] = [
  { method: "GET", path: WORKER_SOCKET, access: { who: "worker" }, outside: "websocket" },
  { method: "GET", path: TLS_ROUTES.ca, access: { who: "anyone" }, outside: "tls" },
  { method: "POST", path: TLS_ROUTES.enroll, access: { who: "join-token" }, outside: "tls" },
  { method: "POST", path: TLS_ROUTES.renew, access: { who: "worker-certificate" }, outside: "tls" },
];

/**
 * Every route of the master, method and path, read from the app itself so it cannot drift from it, with
 * the rule that guards each (`access: null` for a route registered without one): what the access matrix
 * test tries with every kind of credential, what docs/access.md lists, what the fuzz test aims at and what
 * 405 answers are made from. The route factories only keep the context for their handlers, so the table
 * is built without a running master; pass `app` to read another one.
 */
export function routeTable(app?: App): RouteRule[] {
  const from = app ?? createApp({ log: { info() {}, error() {} } } as unknown as MasterContext);
  return [...OUTSIDE_APP, ...routesOf(from as never)];
}

/** The handlers' routes of a Hono app (middleware, registered for every method, left out), each once. */
function appRoutes(routes: { method: string; path: string }[]): Route[] {
  const seen = new Set<string>();
  return routes
    .filter((r) => r.method !== "ALL")
    .filter((r) => !seen.has(`${r.method} ${r.path}`) && seen.add(`${r.method} ${r.path}`))
    .map((r) => ({ method: r.method, path: r.path }));
}

/** A regular expression that matches the paths of Hono pattern `path`. */
export function patternRegex(path: string): RegExp {
  const parts = path.split("/").map((seg) => {
    const m = /^:[A-Za-z0-9_]+(?:\{(.+)\})?$/.exec(seg);
    if (m) return m[1] ? `(?:${m[1]})` : "[^/]+";
    if (seg === "*") return ".*";
    return seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  });
  return new RegExp(`^${parts.join("/")}$`);
}

const ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const matchers = new WeakMap<object, { re: RegExp; method: string }[]>();

/** The methods routes take at `path` (GET implies HEAD), or none when no route has that path. */
function allowedMethods(routes: { method: string; path: string }[], path: string): string[] {
  let list = matchers.get(routes);
  if (!list) {
    list = appRoutes(routes).map((r) => ({ re: patternRegex(r.path), method: r.method }));
    matchers.set(routes, list);
  }
  const methods = new Set(list.filter((r) => r.re.test(path)).map((r) => r.method));
  if (methods.size === 0) return [];
  if (methods.has("GET")) methods.add("HEAD");
  methods.add("OPTIONS");
  return ORDER.filter((m) => methods.has(m));
}

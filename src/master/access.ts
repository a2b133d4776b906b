import type { Hono, MiddlewareHandler } from "hono";
import { AppError, badRequest, notFound } from "../lib/errors.ts";
import { type LogOnce, logOnce } from "../lib/log-once.ts";
import { getJob } from "../store/jobs.ts";
import { getRelease } from "../store/releases.ts";
import type { JobRow, ReleaseRow, RepoRow } from "../store/schema.ts";
import type { Role } from "../store/tokens.ts";
import { bearerOf, type Caller, forbidden, identify, type Presented, RANK, workerOf } from "./auth.ts";
import type { MasterContext } from "./context.ts";
import { isJobCredential } from "./job-credential.ts";
import { checkTag } from "./releases.ts";
import { mayRead, visibleRepo } from "./repo-access.ts";

/*
 * Every route of the master declares who may call it, as data: the guard built from the declaration is
 * the route's first handler, so the declaration is what is enforced, and routeTable() lists it for the
 * tests that try every route with every kind of credential (src/master/access.test.ts) and for the
 * docs (docs/access.md). A route registered without a guard shows up there with no rule, which fails
 * that test.
 */

/** A role a person or script's token can have. */
export type ClientRole = Exclude<Role, "worker">;

/**
 * How a route's target relates to projects, which decides what a token limited to one project gets:
 * - `shared`: the target belongs to no project (workers, recipes, templates); any token with the role.
 * - `global`: the request changes (or reads) what every project shares: project-limited tokens get 403.
 * - `job`: the path's `:id` names a job; a token of another project gets 404, as if it did not exist.
 * - `release`: the path's `:tag` names a release; likewise 404 for another project's.
 * - `repo`: the path's `:name` names a package repository; one the token may not read gets 404.
 * - `body-project`: the body names the project (a submit, a new repository): another project's gets 403
 *   (checked by the handler).
 * - `body-job`: the body names a job (a promotion): another project's gets 404 (checked by the handler).
 * - `list`: the answer is filtered down to the token's project (by the handler).
 */
export type Scope = "shared" | "global" | "job" | "release" | "repo" | "body-project" | "body-job" | "list";

/** Who may call a route. */
export type Access =
  /** Anyone who can reach the master, with or without a credential (health, metrics, release files). */
  | { who: "anyone" }
  /** A client token of at least `role`; `workers` lets worker tokens in too (reads they need). */
  | { who: "client"; role: ClientRole; scope: Scope; workers?: boolean }
  /** A worker token: the worker protocol. */
  | { who: "worker" }
  /** The credential of the job the path's `:id` names, while its attempt is assigned or running. */
  | { who: "job" }
  /**
   * A package repository's files (the path's `:name`): anyone for a public repository; for another, a
   * client token that may read it, as Bearer or as the password of Basic (apt's auth.conf, dnf's
   * password=). A token that may not read it gets 404, as for a repository that does not exist.
   */
  | { who: "repo-reader" }
  /** TLS enrollment: a single-use join token (src/tls/enroll.ts checks it, before the app). */
  | { who: "join-token" }
  /** TLS renewal: the worker's own certificate and proof of its key (src/tls/enroll.ts, before the app). */
  | { who: "worker-certificate" };

/** What a guarded route's handlers can read: the caller, and the job, release or repository its path named. */
export type ApiEnv = { Variables: { caller: Caller; job: JobRow; release: ReleaseRow; repo: RepoRow } };

const rules = new WeakMap<object, Access>();

/** The rule a guard was built from, or undefined for any other handler. */
export const ruleOf = (handler: unknown) => (typeof handler === "function" ? rules.get(handler) : undefined);

/** Describes a rule in a few words, for refusals, the route table and the docs. */
export function describeAccess(a: Access): string {
  switch (a.who) {
    case "anyone":
      return "anyone";
    case "worker":
      return "worker token";
    case "job":
      return "the job's own credential";
    case "repo-reader":
      return "anyone for a public repository, else a token that may read it";
    case "join-token":
      return "a join token";
    case "worker-certificate":
      return "a worker certificate";
    case "client":
      return `${a.role}${a.workers ? " or worker" : ""}, ${a.scope}`;
  }
}

/**
 * The guard of one route: identifies the caller (401), checks the kind of credential and the role (403),
 * keeps project-limited tokens off what every project shares (403), and loads the job or release the
 * path names, answering 404 for one of another project. It runs before the route reads its body.
 */
export function guardFor(ctx: MasterContext) {
  return (access: Access): MiddlewareHandler<ApiEnv> => {
    const guard: MiddlewareHandler<ApiEnv> = async (c, next) => {
      if (access.who === "anyone") return next();
      const set = (k: string, v: unknown) => c.set(k as never, v as never);
      const req = {
        method: c.req.method,
        path: c.req.path,
        authorization: c.req.header("authorization"),
        request: c.req.raw,
        ip: (c.env as { ip?: { address?: string } } | undefined)?.ip?.address,
      };
      if (access.who === "repo-reader") {
        const refusal = await readRepo(ctx, req, c.req.param("name") ?? "", set);
        if (refusal) return refusal;
      } else await check(ctx, access, req, c.req.param() as Record<string, string>, set);
      await next();
    };
    rules.set(guard, access);
    return guard;
  };
}

/**
 * Admits the caller of a request the app does not route (the worker websocket) by the same rules as a
 * guard; throws the 401 or 403 AppError.
 */
export async function admitRequest(
  ctx: MasterContext,
  access: Access,
  req: Request,
  ip?: string,
): Promise<Caller> {
  const path = new URL(req.url).pathname;
  let caller: Caller | null = null;
  try {
    return await check(
      ctx,
      access,
      { method: req.method, path, authorization: req.headers.get("authorization"), request: req, ip },
      {},
      (k, v) => {
        if (k === "caller") caller = v as Caller;
      },
    );
  } catch (err) {
    // A certificate refused on a TLS master is said by tls.ts already, with the address and reason.
    if (err instanceof AppError && !(access.who === "worker" && ctx.tls)) {
      let log = doorLogs.get(ctx);
      if (!log) {
        log = logOnce((msg) => ctx.log.warn(msg));
        doorLogs.set(ctx, log);
      }
      const c = caller as Caller | null;
      const who = c ? ` for token ${c.name} (${c.tokenId}, ${c.role})` : "";
      log(
        `${err.code} ${req.method} ${path}`,
        `refused ${req.method} ${path}${who}: ${err.status} ${err.code}: ${err.message}`,
      );
    }
    throw err;
  }
}

/**
 * The guard of a repository's files: a public repository needs nothing; another needs a token (Bearer, or
 * Basic with the token as password) of a client role that may read it. Anything else is told the
 * repository does not exist, as the API does. Returns the 401 answer, which asks for Basic credentials.
 */
async function readRepo(
  ctx: MasterContext,
  req: { method: string; path: string; authorization: string | null | undefined },
  name: string,
  set: (key: "caller" | "repo", value: unknown) => void,
): Promise<Response | null> {
  const unreadable = () =>
    new AppError("NOT_FOUND", `no repository ${name} here (or it needs a token that may read it)`, {
      status: 404,
    });
  const repo = await visibleRepo(ctx, name, null).catch(() => {
    throw unreadable();
  });
  set("repo", repo);
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(req.authorization ?? "");
  let authorization = req.authorization;
  if (basic) {
    // apt and dnf send the token as the password of Basic auth; the user name is not looked at.
    const text = Buffer.from(basic[1]!, "base64").toString("utf8");
    authorization = `Bearer ${text.slice(text.indexOf(":") + 1)}`;
  }
  // A job's credential (its worker's API proxy, for `--use-repo`) reaches the repositories the job named
  // and no other, public ones included: it is checked before a public repository lets anyone in.
  const secret = bearerOf(authorization);
  if (secret && isJobCredential(secret)) {
    const caller = await identify(ctx, { authorization });
    set("caller", caller);
    if (!caller.job?.useRepos.includes(repo.name) || !mayRead(caller.project, repo)) throw unreadable();
    return null;
  }
  if (repo.public) return null;
  let caller: Caller;
  try {
    caller = await identify(ctx, { authorization });
  } catch (err) {
    if (!(err instanceof AppError) || err.status !== 401) throw err;
    const message = `repository ${repo.name} is not public: send a viewer token (Bearer, or Basic with the token as password)`;
    return Response.json(
      { error: { code: "UNAUTHENTICATED", message } },
      { status: 401, headers: { "www-authenticate": `Basic realm="kiln repository ${repo.name}"` } },
    );
  }
  set("caller", caller);
  if (caller.role === "worker" || caller.role === "job" || !mayRead(caller.project, repo)) throw unreadable();
  return null;
}

async function check(
  ctx: MasterContext,
  access: Access,
  req: { method: string; path: string } & Presented,
  params: Record<string, string>,
  set: (key: "caller" | "job" | "release" | "repo", value: unknown) => void,
): Promise<Caller> {
  // On a TLS master the worker protocol is spoken with a certificate only: one without it is refused
  // there (WORKER_CERT_MISSING, said in the log by tls.ts), whatever bearer it carries.
  const caller =
    access.who === "worker" && ctx.tls && req.request
      ? workerOf(await ctx.tls.identify(req.request, req.ip))
      : await identify(ctx, req);
  set("caller", caller);
  await admit(ctx, access, caller, params, set);
  return caller;
}

// Refusals at the doors outside the app, by master: a worker with a revoked token retries for as long as
// it runs, so each kind is told once, then counted (lib/log-once.ts), as the app does for its routes.
const doorLogs = new WeakMap<MasterContext, LogOnce>();

async function admit(
  ctx: MasterContext,
  a: Access,
  caller: Caller,
  params: Record<string, string>,
  set: (key: "job" | "release" | "repo", value: unknown) => void,
) {
  if (a.who === "anyone" || a.who === "repo-reader") return;
  if (a.who === "join-token" || a.who === "worker-certificate")
    throw new Error(`${a.who} is checked by src/tls/enroll.ts before the app, never by a guard`);
  if (a.who === "job") {
    if (caller.role !== "job" || !caller.job)
      throw forbidden("this endpoint takes the credential of the job it names, which its worker holds");
    if (String(caller.job.id) !== params.id)
      throw forbidden(`this credential belongs to job ${caller.job.id}, not to job ${params.id}`);
    return;
  }
  if (a.who === "worker") {
    if (caller.role !== "worker")
      throw forbidden(
        `this endpoint is for workers, which join with a worker token (kiln token create --role worker); this is a ${caller.role} credential`,
      );
    return;
  }
  if (caller.role === "job")
    throw forbidden("a job's credential only reaches its own job's uploads, not the client API");
  if (caller.role === "worker" && !a.workers)
    throw forbidden(
      `a worker token only connects workers; this needs a ${a.role} token (kiln token create --role ${a.role})`,
    );
  if (caller.role !== "worker" && RANK[caller.role] < RANK[a.role])
    throw forbidden(`this needs the ${a.role} role; the token has ${caller.role}`);
  if (a.scope === "global" && caller.project)
    throw forbidden(
      `the token is limited to project ${caller.project}; this concerns every project, so it needs a token without --project`,
    );
  if (a.scope === "job") {
    const text = params.id ?? "";
    if (!/^\d{1,15}$/.test(text))
      throw badRequest(`"${text}" is not a job id: job ids are numbers, see \`kiln jobs\``, "INVALID_JOB_ID");
    const row = await getJob(ctx.store.db, Number(text));
    if (!row || (caller.project && row.project !== caller.project)) throw notFound("job", text);
    set("job", row);
  }
  if (a.scope === "repo") set("repo", await visibleRepo(ctx, params.name ?? "", caller.project));
  if (a.scope === "release") {
    const tag = params.tag ?? "";
    const row = await getRelease(ctx.store.db, checkTag(tag));
    if (!row || (caller.project && row.project !== caller.project)) throw notFound("release", tag);
    set("release", row);
  }
}

/** One row of the route table: a method and path, and who may call it (null when nothing says). */
export interface RouteRule {
  method: string;
  path: string;
  access: Access | null;
  /**
   * Served before the app sees the request: the worker websocket (Bun.serve upgrades it) and, with TLS,
   * enrollment.
   */
  outside?: "websocket" | "tls";
}

/** The worker websocket's path; it is served by Bun.serve's upgrade, outside the Hono app. */
export const WORKER_SOCKET = "/api/v1/worker/connect";

/**
 * Every route of `app` with its rule, in registration order. Middleware that runs for every path
 * (method ALL) is not a route.
 */
export function routesOf(app: Hono<never>): RouteRule[] {
  const byKey = new Map<string, RouteRule>();
  for (const r of app.routes) {
    if (r.method === "ALL") continue;
    const key = `${r.method} ${r.path}`;
    const row = byKey.get(key) ?? { method: r.method, path: r.path, access: null };
    row.access = row.access ?? ruleOf(r.handler) ?? null;
    byKey.set(key, row);
  }
  return [...byKey.values()];
}

import { Hono } from "hono";
import { JOB_STATES } from "../../protocol/job.ts";
import { countByState } from "../../store/jobs.ts";
import { VERSION } from "../../version.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import type { MasterContext } from "../context.ts";

/** Unauthenticated endpoints: health, readiness, Prometheus metrics, the OpenAPI document, the UI stub. */
export function publicRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const anyone = guardFor(ctx)({ who: "anyone" });
  app.get("/healthz", anyone, (c) => c.text("ok\n"));
  app.get("/readyz", anyone, async (c) => {
    await ctx.store.client.execute("SELECT 1");
    return c.text("ready\n");
  });
  app.get("/metrics", anyone, async (c) => {
    const counts = await countByState(ctx.store.db);
    const lines = [
      "# HELP kiln_jobs Jobs by state.",
      "# TYPE kiln_jobs gauge",
      ...JOB_STATES.map((s) => `kiln_jobs{state="${s}"} ${counts[s] ?? 0}`),
      "# HELP kiln_workers_connected Workers with a live connection.",
      "# TYPE kiln_workers_connected gauge",
      `kiln_workers_connected ${ctx.registry.workers.size}`,
      "# HELP kiln_slots Slots of connected workers by use.",
      "# TYPE kiln_slots gauge",
      `kiln_slots{use="busy"} ${[...ctx.registry.workers.values()].reduce((n, w) => n + [...w.slots.values()].filter((s) => s.job).length, 0)}`,
      `kiln_slots{use="total"} ${[...ctx.registry.workers.values()].reduce((n, w) => n + w.slots.size, 0)}`,
      "# HELP kiln_master_rss_bytes Resident memory of the master process.",
      "# TYPE kiln_master_rss_bytes gauge",
      `kiln_master_rss_bytes ${process.memoryUsage.rss()}`,
      "# HELP kiln_master_start_time_seconds When the master started.",
      "# TYPE kiln_master_start_time_seconds gauge",
      `kiln_master_start_time_seconds ${Math.floor(ctx.startedAt / 1000)}`,
      `kiln_build_info{version="${VERSION}"} 1`,
    ];
    return c.text(`${lines.join("\n")}\n`, 200, { "content-type": "text/plain; version=0.0.4" });
  });
  app.get("/api/v1/openapi.json", anyone, (c) => c.json(OPENAPI));
  app.get("/", anyone, (c) =>
    c.html(
      `<!doctype html><meta charset="utf-8"><title>Kiln</title><h1>Kiln ${VERSION}</h1><p>The master is running. Use <code>kiln jobs</code> and <code>kiln workers</code>; the API is under <code>/api/v1/</code>.</p>`,
    ),
  );
  return app;
}

const op = (summary: string, extra: Record<string, unknown> = {}) => ({
  summary,
  security: [{ bearer: [] }],
  responses: {
    "200": { description: "OK" },
    "4XX": { description: 'Bad input: `{"error":{"code","message"}}`' },
  },
  ...extra,
});

/** The admin and client API in OpenAPI 3.1 terms (paths and operations; bodies are described in SPEC.md). */
export const OPENAPI = {
  openapi: "3.1.0",
  info: { title: "Kiln API", version: VERSION },
  components: { securitySchemes: { bearer: { type: "http", scheme: "bearer" } } },
  paths: {
    "/api/v1/jobs": {
      get: op("List jobs (state, project, limit, before)"),
      post: op("Submit a job: a command, or a recipe with its vars"),
    },
    "/api/v1/jobs/{id}": { get: op("Show a job") },
    "/api/v1/jobs/{id}/log": { get: op("Read or follow a job's log from a byte offset (offset, follow)") },
    "/api/v1/jobs/{id}/events": { get: op("A job's state history") },
    "/api/v1/jobs/{id}/cancel": { post: op("Cancel a job") },
    "/api/v1/jobs/{id}/retry": { post: op("Queue a copy of an ended job") },
    "/api/v1/jobs/{id}/rebuild": {
      post: op("Run a succeeded job's inputs again, on another worker where one can, to compare artifacts"),
    },
    "/api/v1/recipes": {
      get: op("List recipes in use (name, latest version, description)"),
      post: op("Add a recipe, or a new version of one (name, source: the TOML text)"),
    },
    "/api/v1/recipes/{name}": {
      get: op("Show a recipe's current version, or any version with ?version=N"),
      delete: op("Remove a recipe from use; the versions old jobs ran are kept"),
    },
    "/api/v1/repos": {
      get: op("List package repositories the caller may read"),
      post: op(
        "Add a repository (operator): name, format deb|rpm, dist, component, archs, keep, project, public",
      ),
    },
    "/api/v1/repos/{name}": {
      get: op("Show a repository, with how clients use it (sources.list line or .repo file)"),
      delete: op("Remove a repository and its files (operator)"),
    },
    "/api/v1/repos/{name}/packages": { get: op("The packages a repository holds (name=PKG for one)") },
    "/api/v1/repos/{name}/key": {
      get: op("The repository's public signing key"),
      put: op("Import the secret key the repository signs with (operator; the key as the body)"),
    },
    "/api/v1/repos/{name}/publish": {
      post: op("Publish a succeeded job's deb/rpm artifacts (job, artifacts, force)"),
    },
    "/api/v1/worker/jobs/{id}/{attempt}/repo-version": {
      get: op(
        "Worker: the newest version of a package the job may read (repo, pkg; the job's own credential)",
      ),
    },
    "/api/v1/workers": { get: op("List workers and their slots") },
    "/api/v1/admin/workers/{name}/drain": { post: op("Stop giving a worker new jobs") },
    "/api/v1/admin/workers/{name}/hold": { post: op("Hold a worker with a reason") },
    "/api/v1/admin/workers/{name}/release": { post: op("Release a held or draining worker") },
    "/api/v1/admin/workers/{name}": { delete: op("Remove an offline worker that holds no job") },
    "/api/v1/admin/workers/{name}/slots/{slot}/hold": { post: op("Hold one slot of a connected worker") },
    "/api/v1/admin/workers/{name}/slots/{slot}/release": { post: op("Release a held slot") },
    "/api/v1/admin/tokens": { get: op("List tokens"), post: op("Create a token (role, project, ttl)") },
    "/api/v1/admin/tokens/{id}": {
      delete: op("Revoke a token; the connections it holds open (worker socket, followed logs) close"),
    },
    "/api/v1/templates": {
      get: op("List build-root templates"),
      post: op("Add or replace a template (name, recipe)"),
    },
    "/api/v1/templates/{name}": {
      get: op("Show a template and its resolved spec"),
      delete: op("Remove one"),
    },
    "/api/v1/templates/{name}/build": { post: op("Build a template now on connected workers") },
    "/api/v1/jobs/{id}/artifacts": { get: op("List a job's artifacts") },
    "/api/v1/jobs/{id}/artifacts/{name}": { get: op("Download an artifact (Range, If-Range)") },
    "/api/v1/worker/artifacts/{id}/{attempt}/{name}": {
      get: op("Worker: how much of an upload the master holds (the job's own credential)"),
      put: op("Worker: upload a chunk of a job's artifact (the job's own credential)"),
    },
    "/api/v1/releases": {
      get: op("List releases"),
      post: op("Promote a succeeded job's artifact to a release (job, artifact, tag)"),
    },
    "/api/v1/releases/{tag}": { get: op("Show a release") },
    "/api/v1/audit": { get: op("The audit log, newest first (limit, before, since); admin") },
  },
};

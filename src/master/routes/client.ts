import { Hono } from "hono";
import { describeIssue } from "../../lib/body.ts";
import { AppError, badRequest } from "../../lib/errors.ts";
import { JobsApi } from "../../protocol/api.ts";
import { isTerminal } from "../../protocol/job.ts";
import { listArtifacts } from "../../store/artifacts.ts";
import { cancelJob, definitionOf, getJob, insertJob, jobHistory, listJobs } from "../../store/jobs.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { artifactView } from "../artifacts.ts";
import { audit } from "../audit.ts";
import { requireProject } from "../auth.ts";
import type { MasterContext } from "../context.ts";
import { rearmOf } from "../idle.ts";
import { queueRebuild, reproducibilityOf } from "../rebuilds.ts";
import { jobFromRequest } from "../submit.ts";
import { jobView, whyQueued } from "../views.ts";
import { jsonBody } from "./json-body.ts";

/** Routes for people and their scripts: submit, list, show, logs, cancel, retry, rebuild. */
export function clientRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);

  app.post("/jobs", guard({ who: "client", role: "submitter", scope: "body-project" }), async (c) => {
    const caller = c.var.caller;
    const req = await jsonBody(c, JobsApi.submit);
    if (req.project !== undefined) requireProject(caller, req.project);
    // A token limited to a project submits to it without saying so (a recipe may still name another,
    // and is refused below).
    if (caller.project && req.project === undefined) req.project = caller.project;
    const job = await jobFromRequest(ctx, req, caller.name);
    // The project may come from the recipe, so a scoped token is checked again against the final one.
    requireProject(caller, job.project);
    const row = await insertJob(ctx.store, job);
    await audit(ctx, caller, "job.submit", `job/${row.id}`, {
      project: row.project,
      name: row.name,
      ...(row.recipe ? { recipe: row.recipe, recipeVersion: row.recipeVersion } : {}),
      ...(row.secrets ? { secrets: Object.keys(row.secrets) } : {}),
    });
    ctx.dispatch();
    return c.json({ id: row.id }, 201);
  });

  app.get("/jobs", guard({ who: "client", role: "viewer", scope: "list" }), async (c) => {
    const caller = c.var.caller;
    const query = c.req.query();
    const q = JobsApi.list.safeParse(query);
    if (!q.success) throw badRequest(describeIssue(q.error.issues[0]!, query));
    const rows = await listJobs(ctx.store.db, { ...q.data, project: caller.project ?? q.data.project });
    return c.json(rows.map((r) => jobView(r)));
  });

  app.get("/jobs/:id", guard({ who: "client", role: "viewer", scope: "job" }), async (c) => {
    const row = c.var.job;
    const waitingFor = row.state === "queued" ? await whyQueued(ctx, row) : null;
    const artifacts = (await listArtifacts(ctx.store.db, row.id)).map(artifactView);
    const reproducibility = await reproducibilityOf(ctx, row);
    return c.json(jobView(row, { waitingFor, logSize: ctx.logs.size(row.id), artifacts, reproducibility }));
  });

  app.get("/jobs/:id/events", guard({ who: "client", role: "viewer", scope: "job" }), async (c) => {
    const row = c.var.job;
    const events = await jobHistory(ctx.store.db, row.id);
    return c.json(events.map((e) => ({ ...e, at: new Date(e.at).toISOString() })));
  });

  app.get("/jobs/:id/log", guard({ who: "client", role: "viewer", scope: "job" }), async (c) => {
    const row = c.var.job;
    const offsetText = c.req.query("offset") ?? "0";
    if (!/^\d{1,15}$/.test(offsetText)) throw badRequest("offset must be a byte count");
    const follow = c.req.query("follow") === "1" || c.req.query("follow") === "true";
    // A followed log can stay open for hours: it ends when its token is revoked or expires, like a
    // worker's socket, instead of outliving the credential that opened it.
    const stop = new AbortController();
    const caller = c.var.caller;
    const close = follow ? ctx.sessions.open(caller.tokenId, caller.expiresAt, () => stop.abort()) : () => {};
    const signal = AbortSignal.any([c.req.raw.signal, stop.signal]);
    const stream = followLog(ctx, row.id, Number(offsetText), follow, signal, rearmOf(c), close);
    return new Response(stream, {
      headers: {
        "content-type": "application/octet-stream",
        "x-kiln-job-state": row.state,
        "cache-control": "no-store",
      },
    });
  });

  app.post("/jobs/:id/cancel", guard({ who: "client", role: "submitter", scope: "job" }), async (c) => {
    const row = c.var.job;
    if (isTerminal(row.state)) {
      throw new AppError("JOB_ENDED", `job ${row.id} already ended ${row.state}; nothing to cancel`, {
        status: 409,
      });
    }
    const after = await cancelJob(ctx.store, row.id);
    if (after && !isTerminal(after.state) && after.worker) {
      ctx.registry.workers
        .get(after.worker)
        ?.send({ type: "job.cancel", jobId: after.id, attempt: after.attempt });
    }
    ctx.logs.notify(row.id);
    await audit(ctx, c.var.caller, "job.cancel", `job/${row.id}`, { project: row.project, was: row.state });
    const now = (await getJob(ctx.store.db, row.id))!;
    return c.json(jobView(now));
  });

  app.post("/jobs/:id/retry", guard({ who: "client", role: "submitter", scope: "job" }), async (c) => {
    const caller = c.var.caller;
    const row = c.var.job;
    if (!isTerminal(row.state)) {
      throw new AppError(
        "JOB_ACTIVE",
        `job ${row.id} is still ${row.state}; cancel it first or wait for it`,
        { status: 409 },
      );
    }
    // A retry runs the same definition, the rendered script with the same values included, even if the
    // recipe has a newer version or was removed since: it repeats the job, it is not a new submit.
    const copy = await insertJob(ctx.store, {
      ...definitionOf(row),
      retryOf: row.id,
      submittedBy: caller.name,
    });
    await audit(ctx, caller, "job.retry", `job/${copy.id}`, { project: copy.project, retryOf: row.id });
    ctx.dispatch();
    return c.json({ id: copy.id }, 201);
  });

  app.post("/jobs/:id/rebuild", guard({ who: "client", role: "submitter", scope: "job" }), async (c) => {
    const caller = c.var.caller;
    const row = c.var.job;
    const copy = await queueRebuild(ctx, row, caller.name);
    await audit(ctx, caller, "job.rebuild", `job/${copy.id}`, { project: copy.project, rebuildOf: row.id });
    return c.json({ id: copy.id }, 201);
  });

  return app;
}

/**
 * Streams a job's log from `offset`. Without `follow` it sends what is there; with it, it keeps sending
 * as the log grows and ends once the job has ended and every byte was sent. It reads from the file each
 * time it is woken, so followers never hold a copy of the log.
 */
function followLog(
  ctx: MasterContext,
  id: number,
  offset: number,
  follow: boolean,
  signal: AbortSignal,
  rearm: () => void,
  ended: () => void,
) {
  let pos = offset;
  const CHUNK = 256 * 1024;
  const close = (controller: ReadableStreamDefaultController<Uint8Array>) => {
    ended();
    controller.close();
  };
  return new ReadableStream<Uint8Array>({
    cancel: ended,
    async pull(controller) {
      for (;;) {
        if (signal.aborted) return close(controller);
        const size = ctx.logs.size(id);
        if (pos < size) {
          const bytes = new Uint8Array(
            await Bun.file(ctx.logs.path(id))
              .slice(pos, Math.min(size, pos + CHUNK))
              .arrayBuffer(),
          );
          pos += bytes.length;
          controller.enqueue(bytes);
          return;
        }
        if (!follow) return close(controller);
        // A quiet job sends nothing for a while: the follower still counts as active (see idle.ts). One
        // that stops reading is not pulled from, does not re-arm, and is closed when the timer runs out.
        rearm();
        const row = await getJob(ctx.store.db, id);
        if (!row || (isTerminal(row.state) && pos >= ctx.logs.size(id))) return close(controller);
        await ctx.logs.waitForChange(id, 1000, signal);
      }
    },
  });
}

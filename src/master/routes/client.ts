import { Hono } from "hono";
import { describeIssue } from "../../lib/body.ts";
import { AppError, badRequest, notFound } from "../../lib/errors.ts";
import { JobsApi } from "../../protocol/api.ts";
import { isTerminal } from "../../protocol/job.ts";
import { listArtifacts } from "../../store/artifacts.ts";
import { cancelJob, definitionOf, getJob, insertJob, jobHistory, listJobs } from "../../store/jobs.ts";
import type { JobRow } from "../../store/schema.ts";
import { artifactView } from "../artifacts.ts";
import type { Caller } from "../auth.ts";
import { requireRole } from "../auth.ts";
import type { MasterContext } from "../context.ts";
import { rearmOf } from "../idle.ts";
import { queueRebuild, reproducibilityOf } from "../rebuilds.ts";
import { jobFromRequest } from "../submit.ts";
import { jobView, whyQueued } from "../views.ts";
import { jsonBody } from "./json-body.ts";

type Env = { Variables: { caller: Caller } };

function jobId(text: string): number {
  if (!/^\d{1,15}$/.test(text))
    throw badRequest(`"${text}" is not a job id: job ids are numbers, see \`kiln jobs\``, "INVALID_JOB_ID");
  return Number(text);
}

async function loadJob(ctx: MasterContext, caller: Caller, text: string): Promise<JobRow> {
  const row = await getJob(ctx.store.db, jobId(text));
  if (!row || (caller.project && row.project !== caller.project)) throw notFound("job", text);
  return row;
}

/** Routes for people and their scripts: submit, list, show, logs, cancel, retry, rebuild. */
export function clientRoutes(ctx: MasterContext) {
  const app = new Hono<Env>();

  app.post("/jobs", async (c) => {
    const req = await jsonBody(c, JobsApi.submit);
    const caller = requireRole(c, "submitter", req.project);
    // A token limited to a project submits to it without saying so (a recipe may still name another,
    // and is refused below).
    if (caller.project && req.project === undefined) req.project = caller.project;
    const job = await jobFromRequest(ctx, req, caller.name);
    // The project may come from the recipe, so a scoped token is checked again against the final one.
    requireRole(c, "submitter", job.project);
    const row = await insertJob(ctx.store, job);
    ctx.dispatch();
    return c.json({ id: row.id }, 201);
  });

  app.get("/jobs", async (c) => {
    const caller = requireRole(c, "viewer");
    const query = c.req.query();
    const q = JobsApi.list.safeParse(query);
    if (!q.success) throw badRequest(describeIssue(q.error.issues[0]!, query));
    const rows = await listJobs(ctx.store.db, { ...q.data, project: caller.project ?? q.data.project });
    return c.json(rows.map((r) => jobView(r)));
  });

  app.get("/jobs/:id", async (c) => {
    const caller = requireRole(c, "viewer");
    const row = await loadJob(ctx, caller, c.req.param("id"));
    const waitingFor = row.state === "queued" ? await whyQueued(ctx, row) : null;
    const artifacts = (await listArtifacts(ctx.store.db, row.id)).map(artifactView);
    const reproducibility = await reproducibilityOf(ctx, row);
    return c.json(jobView(row, { waitingFor, logSize: ctx.logs.size(row.id), artifacts, reproducibility }));
  });

  app.get("/jobs/:id/events", async (c) => {
    const caller = requireRole(c, "viewer");
    const row = await loadJob(ctx, caller, c.req.param("id"));
    const events = await jobHistory(ctx.store.db, row.id);
    return c.json(events.map((e) => ({ ...e, at: new Date(e.at).toISOString() })));
  });

  app.get("/jobs/:id/log", async (c) => {
    const caller = requireRole(c, "viewer");
    const row = await loadJob(ctx, caller, c.req.param("id"));
    const offsetText = c.req.query("offset") ?? "0";
    if (!/^\d{1,15}$/.test(offsetText)) throw badRequest("offset must be a byte count");
    const follow = c.req.query("follow") === "1" || c.req.query("follow") === "true";
    const stream = followLog(ctx, row.id, Number(offsetText), follow, c.req.raw.signal, rearmOf(c));
    return new Response(stream, {
      headers: {
        "content-type": "application/octet-stream",
        "x-kiln-job-state": row.state,
        "cache-control": "no-store",
      },
    });
  });

  app.post("/jobs/:id/cancel", async (c) => {
    const caller = requireRole(c, "submitter");
    const row = await loadJob(ctx, caller, c.req.param("id"));
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
    const now = (await getJob(ctx.store.db, row.id))!;
    return c.json(jobView(now));
  });

  app.post("/jobs/:id/retry", async (c) => {
    const caller = requireRole(c, "submitter");
    const row = await loadJob(ctx, caller, c.req.param("id"));
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
    ctx.dispatch();
    return c.json({ id: copy.id }, 201);
  });

  app.post("/jobs/:id/rebuild", async (c) => {
    const caller = requireRole(c, "submitter");
    const row = await loadJob(ctx, caller, c.req.param("id"));
    const copy = await queueRebuild(ctx, row, caller.name);
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
) {
  let pos = offset;
  const CHUNK = 256 * 1024;
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        if (signal.aborted) return controller.close();
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
        if (!follow) return controller.close();
        // A quiet job sends nothing for a while: the follower still counts as active (see idle.ts). One
        // that stops reading is not pulled from, does not re-arm, and is closed when the timer runs out.
        rearm();
        const row = await getJob(ctx.store.db, id);
        if (!row || (isTerminal(row.state) && pos >= ctx.logs.size(id))) return controller.close();
        await ctx.logs.waitForChange(id, 1000, signal);
      }
    },
  });
}

import { Hono } from "hono";
import { parseDuration } from "../../lib/duration.ts";
import { AppError, coerceError, notFound } from "../../lib/errors.ts";
import { checkName } from "../../lib/names.ts";
import { AdminApi } from "../../protocol/api.ts";
import { listJoinTokens } from "../../store/enrollment.ts";
import { activeJobsOf, getJob } from "../../store/jobs.ts";
import { createToken, listTokens, revokeToken } from "../../store/tokens.ts";
import { getWorker, listWorkers, removeWorker, setWorker } from "../../store/workers.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { audit } from "../audit.ts";
import type { Caller } from "../auth.ts";
import type { MasterContext } from "../context.ts";
import { createWorkerJoinToken, revokeJoin, revokeWorker } from "../tls.ts";
import { loseAttempt } from "../worker-socket.ts";
import { jsonBody } from "./json-body.ts";

/**
 * The API shape of a worker: its registration joined with what the live connection says. For a caller
 * limited to a project, a slot busy with another project's job shows as busy with no job id.
 */
export async function workerViews(ctx: MasterContext, caller?: Caller) {
  const rows = await listWorkers(ctx.store.db);
  const mine = caller?.project ? await jobsOfProject(ctx, caller.project) : null;
  const shown = (job: number) => (mine === null || mine.has(job) ? job : null);
  return rows.map((w) => {
    const live = ctx.registry.workers.get(w.name);
    const slots = live
      ? [...live.slots.values()].map((s) => ({
          name: s.name,
          resources: s.resources,
          held: s.held,
          job: s.job ? shown(Number(s.job.split(":")[0])) : null,
          busy: s.job !== null,
        }))
      : w.slots.map((s) => ({ ...s, held: null, job: null, busy: false }));
    return {
      name: w.name,
      arch: w.arch,
      channels: w.channels,
      version: w.version,
      connected: live !== undefined,
      state: !live ? "offline" : w.holdReason ? "held" : w.draining ? "draining" : "ready",
      draining: w.draining,
      holdReason: w.holdReason,
      capacity: slots.length,
      busy: slots.filter((s) => s.busy).length,
      slots: slots.map(({ busy: _, ...s }) => s),
      firstSeen: new Date(w.firstSeen).toISOString(),
      lastSeen: new Date(live ? Date.now() : w.lastSeen).toISOString(),
    };
  });
}

/** The ids of the project's jobs that occupy a slot now (a handful: one per busy slot at most). */
async function jobsOfProject(ctx: MasterContext, project: string): Promise<Set<number>> {
  const ids = [...ctx.registry.workers.values()].flatMap((w) =>
    [...w.slots.values()].filter((s) => s.job).map((s) => Number(s.job!.split(":")[0])),
  );
  const rows = await Promise.all(ids.map((id) => getJob(ctx.store.db, id)));
  return new Set(rows.filter((r) => r?.project === project).map((r) => r!.id));
}

const operator = { who: "client", role: "operator", scope: "global" } as const;

/** Worker listing for viewers; drain, hold, release and tokens for operators and admins. */
export function adminRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);

  app.get("/workers", guard({ who: "client", role: "viewer", scope: "shared" }), async (c) => {
    return c.json(await workerViews(ctx, c.var.caller));
  });

  const change = async (
    caller: Caller,
    action: string,
    name: string,
    set: { draining?: boolean; holdReason?: string | null },
  ) => {
    checkName("worker", name);
    if (!(await getWorker(ctx.store.db, name))) throw notFound("worker", name);
    await setWorker(ctx.store, name, set);
    const live = ctx.registry.workers.get(name);
    if (live) {
      if (set.draining !== undefined) {
        live.draining = set.draining;
        live.send({ type: "worker.draining", draining: set.draining });
      }
      if (set.holdReason !== undefined) live.holdReason = set.holdReason;
    }
    ctx.dispatch();
    await audit(
      ctx,
      caller,
      action,
      `worker/${name}`,
      set.holdReason ? { reason: set.holdReason } : undefined,
    );
    return (await workerViews(ctx, caller)).find((w) => w.name === name);
  };

  app.post("/admin/workers/:name/drain", guard(operator), async (c) => {
    return c.json(await change(c.var.caller, "worker.drain", c.req.param("name"), { draining: true }));
  });
  app.post("/admin/workers/:name/hold", guard(operator), async (c) => {
    const req = await jsonBody(c, AdminApi.hold);
    return c.json(await change(c.var.caller, "worker.hold", c.req.param("name"), { holdReason: req.reason }));
  });
  app.post("/admin/workers/:name/release", guard(operator), async (c) => {
    return c.json(
      await change(c.var.caller, "worker.release", c.req.param("name"), {
        draining: false,
        holdReason: null,
      }),
    );
  });

  app.delete("/admin/workers/:name", guard(operator), async (c) => {
    const name = checkName("worker", c.req.param("name"));
    // On a TLS master removing a worker revokes its certificates and closes its connection first: it can
    // neither stay nor come back, so the jobs it held go back to the queue now.
    const revoked = ctx.tls ? await revokeWorker(ctx, name) : 0;
    if (ctx.registry.workers.has(name)) {
      throw new AppError(
        "WORKER_CONNECTED",
        `worker ${name} is connected: stop it first (or drain it and wait), then remove it`,
        { status: 409 },
      );
    }
    const active = await activeJobsOf(ctx.store.db, name);
    if (ctx.tls) for (const row of active) await loseAttempt(ctx, row, `worker ${name} was removed`);
    else if (active.length > 0) {
      throw new AppError(
        "WORKER_HAS_JOBS",
        `worker ${name} still holds job(s) ${active.map((r) => r.id).join(", ")}; they are re-queued when their leases run out, then it can be removed`,
        { status: 409 },
      );
    }
    if (!(await removeWorker(ctx.store, name)) && revoked === 0) throw notFound("worker", name);
    await audit(
      ctx,
      c.var.caller,
      "worker.rm",
      `worker/${name}`,
      ctx.tls ? { revokedCertificates: revoked } : undefined,
    );
    return c.json({ removed: name, ...(ctx.tls ? { revokedCertificates: revoked } : {}) });
  });

  // Slot holds live on the worker (it keeps them across restarts); the master relays the operator's word.
  const slotAction = async (
    caller: Caller,
    name: string,
    slot: string,
    msg: { type: "slot.hold"; slot: string; reason: string } | { type: "slot.release"; slot: string },
  ) => {
    checkName("worker", name);
    checkName("slot", slot);
    const live = ctx.registry.workers.get(name);
    if (!live) {
      if (!(await getWorker(ctx.store.db, name))) throw notFound("worker", name);
      throw new AppError(
        "WORKER_OFFLINE",
        `worker ${name} is not connected; slot holds are kept by the worker itself`,
        { status: 409 },
      );
    }
    if (!live.slots.has(slot))
      throw new AppError("SLOT_NOT_FOUND", `worker ${name} has no slot ${slot}: see \`kiln workers\``, {
        status: 404,
      });
    live.send(msg);
    await audit(
      ctx,
      caller,
      msg.type,
      `worker/${name}/slot/${slot}`,
      msg.type === "slot.hold" ? { reason: msg.reason } : undefined,
    );
    return { worker: name, slot, held: msg.type === "slot.hold" ? msg.reason : null };
  };
  app.post("/admin/workers/:name/slots/:slot/hold", guard(operator), async (c) => {
    const req = await jsonBody(c, AdminApi.hold);
    const slot = c.req.param("slot");
    return c.json(
      await slotAction(c.var.caller, c.req.param("name"), slot, {
        type: "slot.hold",
        slot,
        reason: req.reason,
      }),
    );
  });
  app.post("/admin/workers/:name/slots/:slot/release", guard(operator), async (c) => {
    const slot = c.req.param("slot");
    return c.json(await slotAction(c.var.caller, c.req.param("name"), slot, { type: "slot.release", slot }));
  });

  const admin = { who: "client", role: "admin", scope: "global" } as const;
  app.post("/admin/tokens", guard(admin), async (c) => {
    const req = await jsonBody(c, AdminApi.createToken);
    if (req.project && (req.role === "admin" || req.role === "worker")) {
      // An admin token manages the whole master and a worker runs every project's jobs: a project on
      // either would suggest a limit nothing enforces.
      throw new AppError(
        "INVALID_REQUEST",
        `a ${req.role} token cannot be limited to a project: use --role operator, submitter or viewer with --project`,
      );
    }
    let ttlMs: number | null = null;
    if (req.ttl) {
      try {
        ttlMs = parseDuration(req.ttl);
      } catch (err) {
        throw new AppError("INVALID_REQUEST", `ttl: ${coerceError(err).message}`);
      }
    }
    // On a TLS master a worker joins with a join token (single-use, expiring, pinning the CA) and gets a
    // certificate; a worker bearer token would not be let in.
    if (req.role === "worker" && ctx.tls) {
      if (req.project || req.name)
        throw new AppError(
          "INVALID_REQUEST",
          "a join token has no project or name: kiln token ls shows the worker that used it",
        );
      const j = await createWorkerJoinToken(ctx, { ttlMs, createdBy: c.var.caller.name });
      // The secret is in the answer only: never in the audit log or the master's log.
      await audit(ctx, c.var.caller, "token.create", `token/${j.id}`, {
        kind: "join",
        role: "worker",
        ttl: req.ttl ?? null,
      });
      return c.json({ id: j.id, token: j.token, expiresAt: new Date(j.expiresAt).toISOString() }, 201);
    }
    const t = await createToken(ctx.store, {
      role: req.role,
      name: req.name ?? req.role,
      project: req.project ?? null,
      ttlMs,
    });
    // The secret is in the answer only: never in the audit log or the master's log.
    await audit(ctx, c.var.caller, "token.create", `token/${t.id}`, {
      name: req.name ?? req.role,
      role: req.role,
      project: req.project ?? null,
      ttl: req.ttl ?? null,
    });
    return c.json({ id: t.id, token: t.secret }, 201);
  });
  app.get("/admin/tokens", guard(admin), async (c) => {
    const rows = await listTokens(ctx.store.db);
    const iso = (t: number | null) => (t === null ? null : new Date(t).toISOString());
    const api = rows.map((t) => ({
      id: t.id,
      kind: "api",
      name: t.name,
      role: t.role,
      project: t.project,
      createdAt: iso(t.createdAt),
      expiresAt: iso(t.expiresAt),
      revoked: t.revokedAt !== null,
      usedBy: null as string | null,
    }));
    const joins = (await listJoinTokens(ctx.store.db)).map((t) => ({
      id: t.id,
      kind: "join",
      name: "join",
      role: t.role,
      project: null,
      createdAt: iso(t.createdAt),
      expiresAt: iso(t.expiresAt),
      revoked: t.revokedAt !== null,
      usedBy: t.usedBy,
    }));
    return c.json([...api, ...joins]);
  });
  app.delete("/admin/tokens/:id", guard(admin), async (c) => {
    const id = c.req.param("id");
    if (!/^[0-9a-f]{12}$/.test(id))
      throw new AppError("INVALID_REQUEST", `"${id}" is not a token id: see \`kiln token ls\``);
    const row = await revokeToken(ctx.store, id);
    if (row) {
      // Connections the token opened (a worker's socket, followed logs) end now, not at their next request.
      const closed = ctx.sessions.revoke(id);
      ctx.log.info(
        `token ${row.name} (${id}, ${row.role}) revoked; ${closed} open connection(s) of it closed`,
      );
      await audit(ctx, c.var.caller, "token.revoke", `token/${id}`, {
        name: row.name,
        role: row.role,
        closed,
      });
      return c.json({ id, revoked: true, closed });
    }
    // A join token takes the certificates that came from it, and their connections.
    if (!(await revokeJoin(ctx, id))) throw notFound("token", id);
    await audit(ctx, c.var.caller, "token.revoke", `token/${id}`, { kind: "join" });
    return c.json({ id, revoked: true, closed: 0 });
  });

  return app;
}

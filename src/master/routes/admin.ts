import { Hono } from "hono";
import { parseDuration } from "../../lib/duration.ts";
import { AppError, coerceError, notFound } from "../../lib/errors.ts";
import { checkName } from "../../lib/names.ts";
import { AdminApi } from "../../protocol/api.ts";
import { listJoinTokens } from "../../store/enrollment.ts";
import { activeJobsOf } from "../../store/jobs.ts";
import { createToken, listTokens, revokeToken } from "../../store/tokens.ts";
import { getWorker, listWorkers, removeWorker, setWorker } from "../../store/workers.ts";
import type { Caller } from "../auth.ts";
import { requireRole } from "../auth.ts";
import type { MasterContext } from "../context.ts";
import { closeWorkers, createWorkerJoinToken, revokeJoin, revokeWorker, tokenCredential } from "../tls.ts";
import { loseAttempt } from "../worker-socket.ts";
import { jsonBody } from "./json-body.ts";

type Env = { Variables: { caller: Caller } };

/** The API shape of a worker: its registration joined with what the live connection says. */
export async function workerViews(ctx: MasterContext) {
  const rows = await listWorkers(ctx.store.db);
  return rows.map((w) => {
    const live = ctx.registry.workers.get(w.name);
    const slots = live
      ? [...live.slots.values()].map((s) => ({
          name: s.name,
          resources: s.resources,
          held: s.held,
          job: s.job ? Number(s.job.split(":")[0]) : null,
        }))
      : w.slots.map((s) => ({ ...s, held: null, job: null }));
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
      busy: slots.filter((s) => s.job !== null).length,
      slots,
      firstSeen: new Date(w.firstSeen).toISOString(),
      lastSeen: new Date(live ? Date.now() : w.lastSeen).toISOString(),
    };
  });
}

/** Worker listing for viewers; drain, hold, release and tokens for operators and admins. */
export function adminRoutes(ctx: MasterContext) {
  const app = new Hono<Env>();

  app.get("/workers", async (c) => {
    requireRole(c, "viewer");
    return c.json(await workerViews(ctx));
  });

  const change = async (name: string, set: { draining?: boolean; holdReason?: string | null }) => {
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
    return (await workerViews(ctx)).find((w) => w.name === name);
  };

  app.post("/admin/workers/:name/drain", async (c) => {
    requireRole(c, "operator");
    return c.json(await change(c.req.param("name"), { draining: true }));
  });
  app.post("/admin/workers/:name/hold", async (c) => {
    requireRole(c, "operator");
    const req = await jsonBody(c, AdminApi.hold);
    return c.json(await change(c.req.param("name"), { holdReason: req.reason }));
  });
  app.post("/admin/workers/:name/release", async (c) => {
    requireRole(c, "operator");
    return c.json(await change(c.req.param("name"), { draining: false, holdReason: null }));
  });

  app.delete("/admin/workers/:name", async (c) => {
    requireRole(c, "operator");
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
    return c.json({ removed: name, ...(ctx.tls ? { revokedCertificates: revoked } : {}) });
  });

  // Slot holds live on the worker (it keeps them across restarts); the master relays the operator's word.
  const slotAction = async (
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
    return { worker: name, slot, held: msg.type === "slot.hold" ? msg.reason : null };
  };
  app.post("/admin/workers/:name/slots/:slot/hold", async (c) => {
    requireRole(c, "operator");
    const req = await jsonBody(c, AdminApi.hold);
    const slot = c.req.param("slot");
    return c.json(
      await slotAction(c.req.param("name"), slot, { type: "slot.hold", slot, reason: req.reason }),
    );
  });
  app.post("/admin/workers/:name/slots/:slot/release", async (c) => {
    requireRole(c, "operator");
    const slot = c.req.param("slot");
    return c.json(await slotAction(c.req.param("name"), slot, { type: "slot.release", slot }));
  });

  app.post("/admin/tokens", async (c) => {
    requireRole(c, "admin");
    const req = await jsonBody(c, AdminApi.createToken);
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
      const j = await createWorkerJoinToken(ctx, { ttlMs, createdBy: c.get("caller").name });
      return c.json({ id: j.id, token: j.token, expiresAt: new Date(j.expiresAt).toISOString() }, 201);
    }
    const t = await createToken(ctx.store, {
      role: req.role,
      name: req.name ?? req.role,
      project: req.project ?? null,
      ttlMs,
    });
    return c.json({ id: t.id, token: t.secret }, 201);
  });
  app.get("/admin/tokens", async (c) => {
    requireRole(c, "admin");
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
  app.delete("/admin/tokens/:id", async (c) => {
    requireRole(c, "admin");
    const id = c.req.param("id");
    if (!/^[0-9a-f]{12}$/.test(id))
      throw new AppError("INVALID_REQUEST", `"${id}" is not a token id: see \`kiln token ls\``);
    const row = await revokeToken(ctx.store, id);
    // A worker connected with that token goes now, not at its next reconnect; a join token takes the
    // certificates that came from it, and their connections.
    if (row) closeWorkers(ctx, (w) => w.credential === tokenCredential(id), `token ${id} was revoked`);
    else if (!(await revokeJoin(ctx, id))) throw notFound("token", id);
    return c.json({ id, revoked: true });
  });

  return app;
}

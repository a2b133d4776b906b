import type { ServerWebSocket } from "bun";
import { coerceError, isDiskFull } from "../lib/errors.ts";
import { isName } from "../lib/names.ts";
import { isTerminal } from "../protocol/job.ts";
import {
  decodeLogFrame,
  type MasterMessage,
  type WorkerMessage,
  WorkerMessageSchema,
} from "../protocol/wire.ts";
import {
  activeJobsOf,
  extendLeases,
  finishJob,
  getJob,
  markRunning,
  requeueOrLose,
  requeueRefused,
  setProgress,
} from "../store/jobs.ts";
import type { JobRow } from "../store/schema.ts";
import { getWorker, setWorker, upsertWorker } from "../store/workers.ts";
import type { MasterContext } from "./context.ts";
import type { LiveWorker } from "./registry.ts";
import { resolveTemplate } from "./templates.ts";

/*
 * One worker connection. Messages of a connection are handled strictly in order (a promise chain), so a
 * log chunk is always written before the `job.finished` that follows it on the wire.
 */

/** Per-connection state: the worker's name once it said hello, and the chain that orders its messages. */
export interface SocketData {
  name: string | null;
  chain: Promise<void>;
}

/** Where an active attempt's bytes go: attempt number and the offset of its first byte in the job log. */
const bases = new Map<number, { attempt: number; base: number }>();

/** Records where job `row`'s current attempt starts in its log, so its log frames land where they belong. */
export function rememberAttempt(row: Pick<JobRow, "id" | "attempt" | "logBase">) {
  bases.set(row.id, { attempt: row.attempt, base: row.logBase });
}

/** Ends an attempt: moves the job on to a retry or to `lost`, writing a marker into its log. */
export async function loseAttempt(ctx: MasterContext, row: JobRow, why: string) {
  const willRetry = !row.cancelRequested && row.attempt <= row.retries;
  const marker = willRetry
    ? `\n--- kiln: attempt ${row.attempt} lost (${why}); retrying as attempt ${row.attempt + 1} ---\n`
    : `\n--- kiln: attempt ${row.attempt} lost (${why}) ---\n`;
  const base = ctx.logs.append(row.id, marker);
  const after = await requeueOrLose(ctx.store, row, why, base);
  withdrawAttempt(ctx, row);
  if (after)
    ctx.log.info(`job ${row.id}: attempt ${row.attempt} lost (${why}); now ${after.state}`, {
      jobId: row.id,
      attempt: row.attempt,
      worker: row.worker ?? undefined,
    });
  ctx.dispatch();
}

/**
 * The attempt `row` describes is over for the master: its log is closed, its slot freed, and the worker
 * that holds it told to drop it (a no-op for a worker that already has).
 */
function withdrawAttempt(ctx: MasterContext, row: JobRow) {
  ctx.logs.close(row.id);
  bases.delete(row.id);
  if (!row.worker || !row.slot) return;
  const holder = ctx.registry.workers.get(row.worker);
  const slot = holder?.slots.get(row.slot);
  if (slot?.job === `${row.id}:${row.attempt}`) slot.job = null;
  holder?.send({ type: "job.forget", jobId: row.id, attempt: row.attempt });
}

/** The handlers of the worker websocket: hello, heartbeats, job reports and log frames, each in order. */
export function workerSocketHandlers(ctx: MasterContext) {
  const send = (ws: ServerWebSocket<SocketData>, msg: MasterMessage) => ws.send(JSON.stringify(msg));

  async function hello(ws: ServerWebSocket<SocketData>, m: Extract<WorkerMessage, { type: "worker.hello" }>) {
    if (!isName(m.name)) {
      send(ws, { type: "worker.refused", message: `worker name "${m.name}" is not a valid name` });
      ws.close(4000, "invalid name");
      return;
    }
    const previous = ctx.registry.workers.get(m.name);
    if (previous?.instance && m.instance && previous.instance !== m.instance) {
      // Another worker (another data dir, maybe another host) under a name in use: two of them would
      // take each other's place every few milliseconds. The one already connected keeps it.
      const message = `worker name ${m.name} is in use by another connected worker: give this one another --name`;
      ctx.log.warn(`refused a second worker named ${m.name} (another data dir or host): ${message}`);
      send(ws, { type: "worker.refused", message });
      ws.close(4003, "name in use");
      return;
    }
    if (previous) {
      // A reconnect after a network drop can arrive before the old socket is noticed dead: the newer wins.
      ctx.log.warn(`worker ${m.name} connected again; closing its previous connection`);
      ctx.registry.remove(m.name, previous.ws);
      previous.ws.close(4001, "replaced by a newer connection");
    }
    ws.data.name = m.name;
    await upsertWorker(ctx.store, {
      name: m.name,
      arch: m.arch,
      channels: m.channels,
      slots: m.slots.map((s) => ({ name: s.name, resources: s.resources })),
      version: m.version,
    });
    const stored = await getWorker(ctx.store.db, m.name);
    const live: LiveWorker = {
      name: m.name,
      arch: m.arch,
      channels: m.channels,
      slots: new Map(m.slots.map((s) => [s.name, { ...s, job: null }])),
      templates: [],
      draining: stored?.draining ?? false,
      holdReason: stored?.holdReason ?? null,
      send: (msg) => send(ws, msg),
      ws: ws as ServerWebSocket<unknown>,
      instance: m.instance ?? null,
    };
    const reported = new Map<number, number>();
    for (const r of m.running) reported.set(r.jobId, r.attempt);
    for (const r of m.finished) reported.set(r.jobId, r.attempt);
    const active = await activeJobsOf(ctx.store.db, m.name);
    const activeById = new Map(active.map((r) => [r.id, r]));
    send(ws, {
      type: "worker.welcome",
      heartbeatMs: ctx.cfg.master.heartbeat,
      leaseMs: ctx.cfg.master.lease,
    });
    send(ws, { type: "worker.draining", draining: live.draining });
    ctx.registry.add(live);
    for (const r of m.running) {
      const row = activeById.get(r.jobId);
      if (row && row.attempt === r.attempt) {
        const slot = live.slots.get(r.slot);
        if (slot) slot.job = `${r.jobId}:${r.attempt}`;
      }
    }
    // Jobs the store gives to this worker that it does not know about were lost with its previous life.
    for (const row of active) {
      if (reported.get(row.id) !== row.attempt)
        await loseAttempt(ctx, row, `worker ${m.name} restarted without it`);
    }
    const finishedHere = new Set(m.finished.map((f) => `${f.jobId}:${f.attempt}`));
    for (const [jobId, attempt] of reported) {
      const row = activeById.get(jobId);
      if (!row || row.attempt !== attempt) {
        // A result of an earlier attempt of a job that has not ended is still worth having: the worker
        // sends it by itself and acceptLateResult ends the job with it.
        if (finishedHere.has(`${jobId}:${attempt}`)) {
          const now = await getJob(ctx.store.db, jobId);
          if (now && now.attempt > attempt && !isTerminal(now.state)) continue;
        }
        // Already ended or re-queued meanwhile: the worker drops it (an outbox entry is simply acked).
        send(ws, { type: "job.forget", jobId, attempt });
        continue;
      }
      rememberAttempt(row);
      send(ws, { type: "job.log.from", jobId, attempt, offset: ctx.logs.size(jobId) - row.logBase });
      if (row.cancelRequested) send(ws, { type: "job.cancel", jobId, attempt });
    }
    await extendLeases(
      ctx.store,
      m.name,
      m.running.map((r) => r.jobId),
      ctx.cfg.master.lease,
    );
    ctx.log.info(
      `worker ${m.name} connected (${m.arch}, channels ${m.channels.join(",")}, ${m.slots.length} slots)`,
    );
    ctx.dispatch();
  }

  async function handle(ws: ServerWebSocket<SocketData>, m: WorkerMessage) {
    if (m.type === "worker.hello") return hello(ws, m);
    const name = ws.data.name;
    const live = name ? ctx.registry.workers.get(name) : undefined;
    if (!name || !live || live.ws !== (ws as ServerWebSocket<unknown>)) {
      ws.close(4002, "say worker.hello first");
      return;
    }
    switch (m.type) {
      case "worker.heartbeat":
        await extendLeases(
          ctx.store,
          name,
          m.running.map((r) => r.jobId),
          ctx.cfg.master.lease,
        );
        return;
      case "worker.stopping": {
        // Stopped on purpose: its jobs go back to the queue now rather than when their leases run out,
        // and it gets no new ones while it goes.
        live.stopping = true;
        for (const r of m.running) {
          const row = await getJob(ctx.store.db, r.jobId);
          if (row && row.attempt === r.attempt && row.worker === name && !isTerminal(row.state))
            await loseAttempt(ctx, row, `worker ${name} stopped`);
        }
        return;
      }
      case "worker.slots":
        ctx.registry.setSlots(name, m.slots);
        await setWorker(ctx.store, name, {
          slots: m.slots.map((s) => ({ name: s.name, resources: s.resources })),
        });
        ctx.dispatch();
        return;
      case "job.started": {
        const row = await markRunning(ctx.store, m.jobId, m.attempt, name, ctx.cfg.master.lease);
        if (!row) {
          const now = await getJob(ctx.store.db, m.jobId);
          if (!now || now.attempt !== m.attempt || now.worker !== name || now.state !== "running") {
            send(ws, { type: "job.forget", jobId: m.jobId, attempt: m.attempt });
          }
          return;
        }
        rememberAttempt(row);
        ctx.logs.notify(row.id);
        if (row.slot) {
          const slot = live.slots.get(row.slot);
          if (slot) slot.refusals = 0;
        }
        if (row.cancelRequested) send(ws, { type: "job.cancel", jobId: row.id, attempt: row.attempt });
        return;
      }
      case "worker.templates":
        live.templates = m.cached;
        return;
      case "template.get": {
        try {
          const template = await resolveTemplate(ctx.store.db, m.name);
          send(ws, { type: "template.spec", requestId: m.requestId, template, error: null });
        } catch (err) {
          send(ws, {
            type: "template.spec",
            requestId: m.requestId,
            template: null,
            error: coerceError(err).message,
          });
        }
        return;
      }
      case "job.refused": {
        const row = await getJob(ctx.store.db, m.jobId);
        for (const s of live.slots.values()) {
          if (s.job !== `${m.jobId}:${m.attempt}`) continue;
          s.job = null;
          // Back off: 250 ms, doubling per refusal in a row, at most 30 s.
          s.refusals = (s.refusals ?? 0) + 1;
          s.refusedUntil = Date.now() + Math.min(30_000, 250 * 2 ** (s.refusals - 1));
        }
        // Handed back unstarted: the slot was busy or held, or could not be set up for it (then the
        // job's command never ran, even if the worker had said it started).
        if (row && row.attempt === m.attempt && row.worker === name && !isTerminal(row.state)) {
          await requeueRefused(ctx.store, row, m.message, ctx.logs.size(row.id));
          ctx.log.info(`job ${row.id}: ${name} handed it back (${m.message}); re-queued`, {
            jobId: row.id,
            attempt: row.attempt,
            worker: name,
          });
        }
        ctx.dispatch();
        return;
      }
      case "job.progress":
        await setProgress(ctx.store, m.jobId, m.attempt, m.percent, m.message);
        ctx.logs.notify(m.jobId);
        return;
      case "job.finished": {
        const row = await getJob(ctx.store.db, m.jobId);
        if (row && row.attempt === m.attempt && (row.state === "assigned" || row.state === "running")) {
          const have = ctx.logs.size(row.id) - row.logBase;
          // Bytes past the log cap are dropped on arrival, so they are never missing.
          if (have < Math.min(m.logSize, ctx.cfg.master.log_max)) {
            // Some log bytes never arrived: ask for them; the worker sends job.finished again after.
            send(ws, { type: "job.log.from", jobId: row.id, attempt: row.attempt, offset: have });
            return;
          }
          // Committed without waiting for the disk, so the slot's next job is assigned meanwhile; the
          // ack below waits for the sync that makes both durable.
          const done = await finishJob(
            ctx.store,
            row.id,
            row.attempt,
            m.outcome,
            ctx.logs.size(row.id),
            undefined,
            undefined,
            { durable: false },
          );
          if (done)
            ctx.log.info(`job ${row.id}: ${done.state}${done.reason ? ` (${done.reason})` : ""} on ${name}`, {
              jobId: row.id,
              attempt: row.attempt,
              worker: name,
            });
          ctx.logs.close(row.id);
          bases.delete(row.id);
        } else if (row && m.attempt < row.attempt && !isTerminal(row.state)) {
          await acceptLateResult(row, m, name);
        }
        for (const s of live.slots.values()) if (s.job === `${m.jobId}:${m.attempt}`) s.job = null;
        ctx.dispatch();
        // The worker drops its copy of the result on the ack, so the ack waits until the result is on
        // disk here; the next messages of the worker are not held up meanwhile. Unacknowledged, the
        // worker sends the result again.
        ctx.store.sync().then(
          () => send(ws, { type: "job.ack", jobId: m.jobId, attempt: m.attempt }),
          (err) => {
            if (isDiskFull(err)) ctx.storage.wrote(err);
            else ctx.log.error(`job ${m.jobId}: cannot sync its result to disk: ${coerceError(err).message}`);
          },
        );
        return;
      }
    }
  }

  /*
   * The result of an earlier attempt that the master re-queued before it could record it (its lease ran
   * out while the master could not write, or the connection dropped): the work was done, so the job ends
   * with that result and is never run again. A later attempt that is already out is withdrawn.
   */
  async function acceptLateResult(
    row: JobRow,
    m: Extract<WorkerMessage, { type: "job.finished" }>,
    from: string,
  ) {
    const note = `the result of attempt ${m.attempt} (from ${from}) arrived after the job was re-queued; the job ends with it`;
    const size = ctx.logs.append(row.id, `\n--- kiln: ${note} ---\n`);
    const outcome = { ...m.outcome, message: `${m.outcome.message ?? m.outcome.state} (${note})` };
    const done = await finishJob(ctx.store, row.id, row.attempt, outcome, size, Date.now(), [
      "queued",
      "assigned",
      "running",
    ]);
    if (!done) return;
    ctx.log.info(`job ${row.id}: ${done.state}: ${note}`, {
      jobId: row.id,
      attempt: m.attempt,
      worker: from,
    });
    withdrawAttempt(ctx, row);
  }

  async function logChunk(ws: ServerWebSocket<SocketData>, buf: Uint8Array) {
    const frame = decodeLogFrame(buf);
    let b = bases.get(frame.jobId);
    if (!b || b.attempt !== frame.attempt) {
      const row = await getJob(ctx.store.db, frame.jobId);
      if (!row || row.attempt !== frame.attempt || row.worker !== ws.data.name) return;
      if (row.state !== "assigned" && row.state !== "running") return;
      rememberAttempt(row);
      b = bases.get(frame.jobId)!;
    }
    // The cap: bytes past log_max of this attempt are dropped on arrival, and the first of them adds a
    // line that says so. A restarted master sees the cut from the log's size alone.
    const max = ctx.cfg.master.log_max;
    const end = frame.offset + frame.data.length;
    const wrote =
      frame.offset < max
        ? ctx.logs.writeAt(frame.jobId, b.base + frame.offset, frame.data.subarray(0, max - frame.offset))
        : ctx.logs.size(frame.jobId) >= b.base + max;
    if (wrote && end > max && ctx.logs.size(frame.jobId) === b.base + max) {
      ctx.logs.append(
        frame.jobId,
        `\n--- kiln: log cut at ${max} bytes (master.log_max); the job goes on, its output past this is not kept ---\n`,
      );
      ctx.log.warn(`job ${frame.jobId}: log cut at ${max} bytes (master.log_max)`, {
        jobId: frame.jobId,
        attempt: frame.attempt,
      });
    }
    if (!wrote) {
      send(ws, {
        type: "job.log.from",
        jobId: frame.jobId,
        attempt: frame.attempt,
        offset: ctx.logs.size(frame.jobId) - b.base,
      });
    }
  }

  return {
    open(ws: ServerWebSocket<SocketData>) {
      ws.data.chain = Promise.resolve();
    },
    message(ws: ServerWebSocket<SocketData>, raw: string | Buffer) {
      ws.data.chain = ws.data.chain.then(async () => {
        try {
          if (typeof raw !== "string") return await logChunk(ws, new Uint8Array(raw));
          const parsed = WorkerMessageSchema.safeParse(JSON.parse(raw));
          if (!parsed.success) {
            ctx.log.warn(`worker ${ws.data.name ?? "?"}: bad message: ${parsed.error.issues[0]?.message}`);
            return;
          }
          await handle(ws, parsed.data);
        } catch (err) {
          // A full disk is the master's own trouble, said once by the storage health; the worker sends
          // again what was not acknowledged.
          if (isDiskFull(err)) ctx.storage.wrote(err);
          else
            ctx.log.error(
              `handling a message from worker ${ws.data.name ?? "?"}: ${coerceError(err).message}`,
            );
        }
      });
    },
    close(ws: ServerWebSocket<SocketData>) {
      const name = ws.data.name;
      if (!name) return;
      ws.data.chain = ws.data.chain.then(async () => {
        if (ctx.registry.remove(name, ws as ServerWebSocket<unknown>)) {
          await setWorker(ctx.store, name, { connected: false, lastSeen: Date.now() }).catch(() => {});
          ctx.log.info(`worker ${name} disconnected; its jobs keep their leases until they expire`);
        }
      });
    },
  };
}

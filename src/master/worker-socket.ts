import type { ServerWebSocket } from "bun";
import { coerceError, isDiskFull } from "../lib/errors.ts";
import { logOnce, printable } from "../lib/log-once.ts";
import { nameProblem } from "../lib/names.ts";
import { isTerminal, type Outcome } from "../protocol/job.ts";
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
  workerOfAttempt,
} from "../store/jobs.ts";
import type { WriteOptions } from "../store/open.ts";
import type { JobRow } from "../store/schema.ts";
import { getWorker, setWorker, upsertWorker } from "../store/workers.ts";
import type { MasterContext } from "./context.ts";
import { publishes, publishOutcome } from "./job-publish.ts";
import type { LiveWorker } from "./registry.ts";
import { resolveTemplate } from "./templates.ts";

/*
 * One worker connection. Messages of a connection are handled strictly in order (a promise chain), so a
 * log chunk is always written before the `job.finished` that follows it on the wire.
 */

/**
 * Per-connection state: the worker's name once it said hello, the chain that orders its messages, and
 * whether the master has refused the connection (a bad frame): nothing it sent after is handled; and the
 * token it connected with (revoking it, or its expiry, closes the socket).
 */
export interface SocketData {
  name: string | null;
  chain: Promise<void>;
  refused: boolean;
  /** What the upgrade was authenticated with: `token:ID`, or `cert:SERIAL` on a TLS master. */
  credential: string;
  /** The worker its certificate names, on a TLS master: its hello must use that name. */
  certified: string | null;
  /** The token id (or `cert:SERIAL`) that sessions key it by: revoking the token closes the socket. */
  tokenId: string;
  expiresAt: number | null;
  /** Unregisters the connection from ctx.sessions; set while it is open. */
  end: (() => void) | null;
}

const KNOWN_TYPES = new Set<string>(WorkerMessageSchema.options.map((o) => o.shape.type.value));

/** The close code for a frame the master cannot read (a 4xxx code: the application's own, RFC 6455 7.4.2). */
export const BAD_FRAME = 4400;

/**
 * Where an active attempt's bytes go: attempt number, the offset of its first byte in the job log, and
 * the worker running it (only its frames are written).
 */
const bases = new Map<number, { attempt: number; base: number; worker: string | null }>();

/** Records where job `row`'s current attempt starts in its log, so its log frames land where they belong. */
export function rememberAttempt(row: Pick<JobRow, "id" | "attempt" | "logBase" | "worker">) {
  bases.set(row.id, { attempt: row.attempt, base: row.logBase, worker: row.worker });
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
  // One record per kind of refusal, then a count: a broken or hostile worker cannot flood the log.
  const refusal = logOnce((msg) => ctx.log.warn(msg));

  /** Refuses the connection for a frame it cannot read: one close, one log line per kind. */
  function badFrame(ws: ServerWebSocket<SocketData>, kind: string, why: string) {
    if (ws.data.refused) return;
    ws.data.refused = true;
    refusal(
      `bad frame: ${kind}`,
      `closed the connection of worker ${ws.data.name ?? "(before hello)"} (${BAD_FRAME}): ${why}; a worker of another Kiln version, or not a Kiln worker, sends these: upgrade it to this master's version`,
    );
    // A close reason is at most 123 bytes (RFC 6455 5.5).
    ws.close(BAD_FRAME, `bad ${kind}: ${why}`.slice(0, 120));
  }

  async function hello(ws: ServerWebSocket<SocketData>, m: Extract<WorkerMessage, { type: "worker.hello" }>) {
    const problem = nameProblem(m.name);
    if (problem) {
      refusal("worker name", `refused a worker: its name ${problem} (its --name or [worker] name)`);
      send(ws, { type: "worker.refused", message: `worker name ${problem}` });
      ws.close(4000, "invalid name");
      return;
    }
    if (ws.data.certified !== null && ws.data.certified !== m.name) {
      // A certificate is one worker's identity: it cannot speak for another name.
      const message = `this worker's certificate is for ${ws.data.certified}, not ${m.name}: start it with --name ${ws.data.certified}, or join again under the new name`;
      ctx.log.warn(`refused worker ${ws.data.certified} saying hello as ${m.name}: ${message}`);
      send(ws, { type: "worker.refused", message });
      ws.close(4003, "name not in certificate");
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
      credential: ws.data.credential,
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
        await setProgress(ctx.store, m.jobId, m.attempt, name, m.percent, m.message);
        ctx.logs.notify(m.jobId);
        return;
      case "job.finished": {
        const row = await getJob(ctx.store.db, m.jobId);
        // A result counts only from the worker the attempt was given to: another worker's report about
        // it is acknowledged (so it drops it) and changes nothing.
        const mine =
          row !== undefined &&
          (row.attempt === m.attempt
            ? row.worker === name
            : (await workerOfAttempt(ctx.store.db, row.id, m.attempt)) === name);
        if (!mine) {
          if (row && !isTerminal(row.state))
            ctx.log.warn(
              `worker ${name} reported a result for job ${m.jobId} attempt ${m.attempt}, which it was not given; ignored`,
              { jobId: m.jobId, attempt: m.attempt, worker: name },
            );
        } else if (row.attempt === m.attempt && (row.state === "assigned" || row.state === "running")) {
          const have = ctx.logs.size(row.id) - row.logBase;
          // Bytes past the log cap are dropped on arrival, so they are never missing.
          if (have < Math.min(m.logSize, ctx.cfg.master.log_max)) {
            // Some log bytes never arrived: ask for them; the worker sends job.finished again after.
            send(ws, { type: "job.log.from", jobId: row.id, attempt: row.attempt, offset: have });
            return;
          }
          if (publishes(row, m.outcome)) {
            // The job's end waits for its packages to be published, off this connection's message
            // chain; the worker keeps the result (and its lease) until the ack that follows.
            for (const s of live.slots.values()) if (s.job === `${m.jobId}:${m.attempt}`) s.job = null;
            publishThenFinish(row, m, name);
            ctx.dispatch();
            return;
          }
          // Committed without waiting for the disk, so the slot's next job is assigned meanwhile; the
          // ack below waits for the sync that makes both durable.
          await finishAttempt(row, m.outcome, name, { durable: false });
        } else if (m.attempt < row.attempt && !isTerminal(row.state)) {
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

  /** Records the active attempt `row`'s outcome as the job's end, and closes its log. */
  async function finishAttempt(row: JobRow, outcome: Outcome, from: string, opts: WriteOptions = {}) {
    const done = await finishJob(
      ctx.store,
      row.id,
      row.attempt,
      outcome,
      ctx.logs.size(row.id),
      undefined,
      undefined,
      opts,
    );
    if (done)
      ctx.log.info(`job ${row.id}: ${done.state}${done.reason ? ` (${done.reason})` : ""} on ${from}`, {
        jobId: row.id,
        attempt: row.attempt,
        worker: from,
      });
    ctx.logs.close(row.id);
    bases.delete(row.id);
  }

  /** Attempts whose packages are being published; a result the worker sends again meanwhile waits for it. */
  const publishing = new Set<string>();

  /**
   * Publishes the packages of a succeeded attempt, then records the job's end (failed with reason
   * `publish` when the publish was refused) and acks the worker. A master that stops before the end is
   * recorded publishes again when the worker sends the result again: an unchanged package is no change.
   */
  function publishThenFinish(row: JobRow, m: Extract<WorkerMessage, { type: "job.finished" }>, from: string) {
    const key = `${row.id}:${row.attempt}`;
    if (publishing.has(key)) return;
    publishing.add(key);
    (async () => {
      const outcome = await publishOutcome(ctx, row, m.outcome);
      const now = await getJob(ctx.store.db, row.id);
      if (now && now.attempt === row.attempt && (now.state === "assigned" || now.state === "running"))
        await finishAttempt(now, outcome, from);
      else if (now && now.attempt > row.attempt && !isTerminal(now.state))
        // Re-queued while the publish ran (its worker went silent past the lease): the work is done.
        await acceptLateResult(now, { ...m, outcome }, from, true);
      ctx.registry.workers.get(from)?.send({ type: "job.ack", jobId: m.jobId, attempt: m.attempt });
      ctx.dispatch();
    })()
      .catch((err) => {
        if (isDiskFull(err)) ctx.storage.wrote(err);
        else ctx.log.error(`job ${row.id}: recording its end after publishing: ${coerceError(err).message}`);
      })
      .finally(() => publishing.delete(key));
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
    published = false,
  ) {
    const note = `the result of attempt ${m.attempt} (from ${from}) arrived after the job was re-queued; the job ends with it`;
    ctx.logs.append(row.id, `\n--- kiln: ${note} ---\n`);
    const result =
      !published && publishes(row, m.outcome) ? await publishOutcome(ctx, row, m.outcome) : m.outcome;
    const outcome = { ...result, message: `${result.message ?? result.state} (${note})` };
    const done = await finishJob(ctx.store, row.id, row.attempt, outcome, ctx.logs.size(row.id), Date.now(), [
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
    let frame: ReturnType<typeof decodeLogFrame>;
    try {
      frame = decodeLogFrame(buf);
    } catch (err) {
      return badFrame(ws, "log frame", coerceError(err).message);
    }
    let b = bases.get(frame.jobId);
    // Only the worker running the attempt writes its log: another one's frames are dropped unanswered.
    if (b && b.attempt === frame.attempt && b.worker !== ws.data.name) return;
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
      ws.data.refused = false;
      ws.data.end = ctx.sessions.open(ws.data.tokenId, ws.data.expiresAt, (why) => {
        ctx.log.warn(
          `closing the connection of worker ${ws.data.name ?? "?"}: ${why} (token ${ws.data.tokenId}); it needs a new worker token`,
        );
        ws.close(4401, why);
      });
    },
    message(ws: ServerWebSocket<SocketData>, raw: string | Buffer) {
      ws.data.chain = ws.data.chain.then(async () => {
        if (ws.data.refused) return;
        try {
          if (typeof raw !== "string") return await logChunk(ws, new Uint8Array(raw));
          let json: unknown;
          try {
            json = JSON.parse(raw);
          } catch {
            return badFrame(ws, "message", "a text frame that is not JSON");
          }
          const type = (json as { type?: unknown } | null)?.type;
          if (typeof type === "string" && !KNOWN_TYPES.has(type)) {
            // A newer worker may say things this master does not know yet: skipped, the rest goes on.
            refusal(
              "unknown message",
              `ignored a message of unknown type ${JSON.stringify(printable(type.slice(0, 40)))} from worker ${ws.data.name ?? "(before hello)"}: is it newer than this master?`,
            );
            return;
          }
          const parsed = WorkerMessageSchema.safeParse(json);
          if (!parsed.success) {
            const issue = parsed.error.issues[0]!;
            const what = `${typeof type === "string" ? printable(type.slice(0, 40)) : "a message"} ${issue.path.join(".")}: ${issue.message}`;
            return badFrame(ws, "message", what);
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
      ws.data.end?.();
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

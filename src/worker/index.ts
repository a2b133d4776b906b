import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/schema.ts";
import { startApiProxy } from "../job-api/api-proxy.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { logger } from "../lib/log.ts";
import { delay } from "../lib/loop.ts";
import type { JobSpec, Outcome } from "../protocol/job.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import { encodeLogFrame, type MasterMessage, type WorkerMessage } from "../protocol/wire.ts";
import { createArtifactBudget } from "../runner/artifact-budget.ts";
import type { RunHandle, Runner, RunResult, Slot } from "../runner/contract.ts";
import { VERSION } from "../version.ts";
import { deliverArtifacts } from "./artifacts.ts";
import { claimIdentity, defaultArch, instanceId, workerName } from "./identity.ts";
import {
  createJobDir,
  type JobDir,
  jobKey,
  logPath,
  readOutcome,
  removeJobDir,
  scanJobDirs,
  writeOutcome,
} from "./job-dir.ts";
import { JOB_FAULTS, outcomeOf } from "./outcome.ts";
import { createSlotBook, slotsFromConfig } from "./slots.ts";

export interface WorkerOptions {
  cfg: Config;
  data: string;
  token: string;
  runner: Runner;
  /** Echo job output to this process's stderr as well (debug mode). */
  echo?: boolean;
}

interface Active {
  job: JobDir;
  spec: JobSpec;
  slot: Slot;
  logFd: number;
  /** How many bytes of the log the master has been sent (or said it has). */
  sent: number;
  handle: RunHandle | null;
  cancelled: boolean;
  timedOut: boolean;
  timer: Timer | null;
  forgotten: boolean;
  proxy: { close(): void } | null;
}

export interface RunningWorker {
  name: string;
  /**
   * Stops the worker. Running jobs are ended and the master told at once, so it re-queues them; a
   * worker an operator drained first lets its jobs finish and deliver their results (until forceStop).
   */
  stop(): Promise<void>;
  /** Ends a draining stop's wait: running jobs are ended and re-queued as by a plain stop. */
  forceStop(): void;
  done: Promise<void>;
}

const LOG_CHUNK = 64 * 1024;
// A result the master has not acknowledged after this long is sent again: two heartbeats.
const RESEND_FINISHED = 10_000;
// Stop sending log bytes while this much is still queued in the socket; the master asks for the rest.
const MAX_BUFFERED = 4 * 1024 * 1024;

/**
 * Starts a worker: sweeps what a previous life left, connects to the master (reconnecting with backoff),
 * runs what it is given through its Runner, streams logs and delivers results through its outbox.
 */
export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const { cfg } = opts;
  const log = logger("worker");
  const name = workerName(cfg, opts.data);
  const identity = claimIdentity(cfg, name);
  const instance = instanceId(opts.data);
  const arch = cfg.worker.arch || defaultArch();
  const jobsRoot = join(opts.data, "worker", "jobs");
  const slots: Slot[] = slotsFromConfig(cfg);
  const book = createSlotBook(join(opts.data, "worker", "holds"), slots, log, () =>
    send({ type: "worker.slots", slots: book.info() }),
  );
  const runDir = join(opts.data, "worker", "run");
  mkdirSync(runDir, { recursive: true, mode: 0o700 });
  const active = new Map<string, Active>();
  const reportTemplates = () =>
    send({ type: "worker.templates", cached: opts.runner.templates?.list() ?? [] });
  opts.runner.onTemplatesChanged = reportTemplates;
  // `kiln job template NAME` asks the master what NAME is; answers come back by request id.
  let nextRequest = 1;
  const templateRequests = new Map<number, (t: TemplateSpec | null, error: string | null) => void>();
  const askTemplate = (name: string) =>
    new Promise<TemplateSpec>((resolve, reject) => {
      const requestId = nextRequest++;
      const timer = setTimeout(() => {
        templateRequests.delete(requestId);
        reject(new AppError("TEMPLATE_UNANSWERED", "the master did not answer in time"));
      }, 30_000);
      templateRequests.set(requestId, (t, error) => {
        clearTimeout(timer);
        if (t) resolve(t);
        else reject(new AppError("TEMPLATE_NOT_FOUND", error ?? `no template ${name}`));
      });
      send({ type: "template.get", requestId, name });
    });
  /*
   * Finished attempts waiting for the master's ack. `reported` is when job.finished went out after the
   * last log byte; it is cleared when the master asks for bytes again or the connection is new, and the
   * pump loop sends it again then, or when no ack came for a while (the master could not record it), so
   * a result is never left waiting on a full socket or a master that was out of disk.
   */
  const outbox = new Map<
    string,
    { job: JobDir; outcome: Outcome; logSize: number; delivering?: boolean; reported?: number }
  >();

  const { finished, interrupted } = scanJobDirs(jobsRoot);
  if (interrupted.length) {
    log.warn(
      `cleaning up ${interrupted.length} job(s) interrupted by a previous stop; the master re-queues them`,
    );
    await opts.runner.sweep(interrupted.map((d) => d.dir));
    for (const d of interrupted) removeJobDir(d);
  } else {
    await opts.runner.sweep([]);
  }
  for (const d of finished) {
    const o = readOutcome(d)!;
    outbox.set(jobKey(d.jobId, d.attempt), { job: d, ...o });
  }

  let ws: WebSocket | null = null;
  let connected = false;
  let stopping = false;
  let draining = false;
  let forced: (() => void) | null = null;
  let heartbeat: Timer | null = null;
  let pumpTimer: Timer | null = null;

  const send = (msg: WorkerMessage) => {
    if (ws && connected) ws.send(JSON.stringify(msg));
  };

  /** Sends whatever the log file holds past what the master has; returns true when all was sent. */
  const pump = (a: Active): boolean => {
    if (!ws || !connected) return false;
    const size = fstatSync(a.logFd).size;
    const buf = new Uint8Array(LOG_CHUNK);
    while (a.sent < size) {
      if (ws.bufferedAmount > MAX_BUFFERED) return false;
      const n = readSync(a.logFd, buf, 0, Math.min(LOG_CHUNK, size - a.sent), a.sent);
      if (n <= 0) break;
      ws.send(
        encodeLogFrame({
          jobId: a.spec.id,
          attempt: a.spec.attempt,
          offset: a.sent,
          data: buf.subarray(0, n),
        }),
      );
      if (opts.echo) process.stderr.write(buf.subarray(0, n));
      a.sent += n;
    }
    return a.sent >= size;
  };

  const sendFinished = (key: string) => {
    const o = outbox.get(key);
    if (!o || o.delivering || !connected) return;
    const a = active.get(key);
    // Backpressure: the rest of the log goes out on a later turn of the pump loop, then the result.
    if (a && !pump(a)) return;
    if (!existsSync(join(o.job.dir, "artifacts-delivered"))) {
      o.delivering = true;
      deliverArtifacts({
        job: o.job,
        outcome: o.outcome,
        master: cfg.worker.master,
        token: opts.token,
        log,
      }).then(
        (undelivered) => {
          if (undelivered) Object.assign(o, undelivered);
          o.delivering = false;
          sendFinished(key);
        },
        (err) => {
          // Still "delivering" until the retry: the pump loop must not start another attempt meanwhile.
          log.warn(`job ${o.job.jobId}: ${coerceError(err).message}; retrying in 2 s`);
          setTimeout(() => {
            o.delivering = false;
            sendFinished(key);
          }, 2000);
        },
      );
      return;
    }
    send({
      type: "job.finished",
      jobId: o.job.jobId,
      attempt: o.job.attempt,
      outcome: o.outcome,
      logSize: o.logSize,
    });
    o.reported = Date.now();
  };

  /*
   * The slot could not be set up for the job (cgroups, scratch, the launcher's mounts): the job never
   * ran, so it goes back to the queue without spending a retry, and the slot is held with the reason
   * so it stops failing every job it is given. `kiln release W --slot S` offers it again.
   */
  const slotFailed = (a: Active, message: string) => {
    const key = jobKey(a.spec.id, a.spec.attempt);
    if (a.timer) clearTimeout(a.timer);
    a.proxy?.close();
    closeSync(a.logFd);
    active.delete(key);
    removeJobDir(a.job);
    const reason = `set-up failed for job ${a.spec.id}: ${message}`;
    log.error(
      `slot ${a.slot.name}: ${reason}; the slot is held and the job re-queued (kiln release ${name} --slot ${a.slot.name} once fixed)`,
    );
    book.hold(a.slot.name, reason);
    send({
      type: "job.refused",
      jobId: a.spec.id,
      attempt: a.spec.attempt,
      message: `slot ${a.slot.name} on ${name}: ${reason}`,
    });
  };

  const finish = async (a: Active, result: RunResult) => {
    const key = jobKey(a.spec.id, a.spec.attempt);
    if (result.exit.kind === "sandbox" && result.exit.slotFault && !a.forgotten && !a.cancelled) {
      slotFailed(a, result.exit.message);
      return;
    }
    if (a.timer) clearTimeout(a.timer);
    const logSize = fstatSync(a.logFd).size;
    const outcome = outcomeOf(result, a);
    a.proxy?.close();
    if (a.forgotten) {
      closeSync(a.logFd);
      active.delete(key);
      removeJobDir(a.job);
      return;
    }
    writeOutcome(a.job, outcome, logSize);
    outbox.set(key, { job: a.job, outcome, logSize });
    log.info(`job ${a.spec.id}: ${outcome.state}${outcome.reason ? ` (${outcome.reason})` : ""}`);
    // The health check runs before the slot is reported free, so a slot a job broke is never offered.
    await book.check(a.slot).catch(() => false);
    sendFinished(key);
  };

  const startJob = async (spec: JobSpec, slotName: string) => {
    const key = jobKey(spec.id, spec.attempt);
    if (active.has(key) || outbox.has(key)) return;
    const slot = slots.find((s) => s.name === slotName);
    const busy = [...active].some(([k, a]) => a.slot.name === slotName && !outbox.has(k));
    const held = slot ? book.held(slot.name) : null;
    if (!slot || busy || held || stopping) {
      // The master's view and ours disagree (a hold or our stop crossed the assignment on the wire):
      // hand it back.
      const why = stopping ? "stopping" : !slot ? "unknown" : busy ? "busy" : `held: ${held}`;
      log.warn(`job ${spec.id}: slot ${slotName} is ${why}; handing it back`);
      send({
        type: "job.refused",
        jobId: spec.id,
        attempt: spec.attempt,
        message: `slot ${slotName} on ${name} is ${why}`,
      });
      return;
    }
    const job = createJobDir(jobsRoot, spec);
    const logFd = openSync(logPath(job), "a+", 0o600);
    const a: Active = {
      job,
      spec,
      slot,
      logFd,
      sent: 0,
      handle: null,
      cancelled: false,
      timedOut: false,
      timer: null,
      forgotten: false,
      proxy: null,
    };
    active.set(key, a);
    const env: Record<string, string> = {
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      LANG: "C.UTF-8",
      HOME: join(job.dir, "work"),
      KILN_OUT: join(job.dir, "out"),
      KILN_JOB_ID: String(spec.id),
      KILN_ATTEMPT: String(spec.attempt),
      ...spec.env,
    };
    let apiSocket: string | null = null;
    const artifacts = createArtifactBudget(cfg.worker.artifact_budget);
    if (opts.runner.name === "sandbox") {
      apiSocket = join(runDir, `${slot.name}.sock`);
      a.proxy = startApiProxy(apiSocket, {
        jobId: spec.id,
        attempt: spec.attempt,
        egress: spec.egress,
        outDir: join(job.dir, "out"),
        artifacts,
        progress: (percent, message) =>
          send({ type: "job.progress", jobId: spec.id, attempt: spec.attempt, percent, message }),
        markBroken: (message) => book.hold(slot.name, `marked broken by job ${spec.id}: ${message}`),
        template: async (name) => {
          const t = await askTemplate(name);
          if (!a.handle?.attachTemplate)
            throw new AppError("NO_TEMPLATE_CACHE", "this worker's runner cannot attach templates to a job");
          await a.handle.attachTemplate(t);
          return `/kiln/templates/${name}`;
        },
      });
    }
    try {
      a.handle = await opts.runner.start({ spec, slot, dir: job.dir, logFd, env, apiSocket, artifacts });
    } catch (err) {
      const e = coerceError(err);
      const code = e instanceof AppError ? e.code : "";
      await finish(a, {
        exit: { kind: "sandbox", message: e.message, slotFault: !JOB_FAULTS.has(code) },
        limit: null,
        peakMemoryBytes: null,
        cpuMs: null,
      });
      return;
    }
    send({ type: "job.started", jobId: spec.id, attempt: spec.attempt });
    a.timer = setTimeout(() => {
      a.timedOut = true;
      a.handle?.kill();
    }, spec.timeoutMs);
    a.handle.result.then(
      (r) => finish(a, r),
      (err) =>
        finish(a, {
          exit: { kind: "sandbox", message: coerceError(err).message },
          limit: null,
          peakMemoryBytes: null,
          cpuMs: null,
        }),
    );
  };

  const onMessage = (msg: MasterMessage) => {
    switch (msg.type) {
      case "worker.welcome":
        reportTemplates();
        if (heartbeat) clearInterval(heartbeat);
        heartbeat = setInterval(() => {
          send({
            type: "worker.heartbeat",
            running: [...active.values()].map((a) => ({ jobId: a.spec.id, attempt: a.spec.attempt })),
          });
        }, msg.heartbeatMs);
        return;
      case "worker.refused":
        // Said by the connection loop, once per change, with its back-off.
        return;
      case "worker.draining":
        draining = msg.draining;
        return;
      case "job.assign":
        void startJob(msg.job, msg.slot);
        return;
      case "job.cancel": {
        const a = active.get(jobKey(msg.jobId, msg.attempt));
        if (a && !a.cancelled) {
          a.cancelled = true;
          a.handle?.kill();
        }
        return;
      }
      case "template.build": {
        const cache = opts.runner.templates;
        if (!cache) {
          log.warn(`cannot build template ${msg.template.name}: this worker's runner has no template cache`);
          return;
        }
        cache.acquire(msg.template).then(
          (t) => t.release(),
          (err) => log.error(coerceError(err).message),
        );
        return;
      }
      case "template.spec": {
        const waiting = templateRequests.get(msg.requestId);
        templateRequests.delete(msg.requestId);
        waiting?.(msg.template, msg.error);
        return;
      }
      case "slot.hold":
        book.hold(msg.slot, msg.reason);
        return;
      case "slot.release": {
        book.release(msg.slot);
        const slot = slots.find((s) => s.name === msg.slot);
        if (slot) void book.check(slot);
        return;
      }
      case "job.forget": {
        const key = jobKey(msg.jobId, msg.attempt);
        const a = active.get(key);
        if (a) {
          a.forgotten = true;
          a.handle?.kill();
        }
        const o = outbox.get(key);
        if (o) {
          outbox.delete(key);
          if (!a) removeJobDir(o.job);
        }
        return;
      }
      case "job.ack": {
        const key = jobKey(msg.jobId, msg.attempt);
        const o = outbox.get(key);
        if (!o) return;
        outbox.delete(key);
        const a = active.get(key);
        if (a) {
          closeSync(a.logFd);
          active.delete(key);
        }
        removeJobDir(o.job);
        return;
      }
      case "job.log.from": {
        const key = jobKey(msg.jobId, msg.attempt);
        let a = active.get(key);
        const o = outbox.get(key);
        if (!a && o) {
          // A finished job from before a restart: reopen its log to resend what the master lacks.
          a = {
            job: o.job,
            spec: { id: o.job.jobId, attempt: o.job.attempt } as JobSpec,
            slot: slots[0]!,
            proxy: null,
            logFd: openSync(logPath(o.job), "a+"),
            sent: 0,
            handle: null,
            cancelled: false,
            timedOut: false,
            timer: null,
            forgotten: false,
          };
          active.set(key, a);
        }
        if (!a) return;
        a.sent = Math.min(msg.offset, fstatSync(a.logFd).size);
        if (o) o.reported = undefined;
        if (o) sendFinished(key);
        else pump(a);
        return;
      }
    }
  };

  /*
   * Why the last connection attempt failed, said once per change at the default level: an operator
   * debugging a worker that never shows up reads it in the worker's log, without a flood.
   */
  let lastTrouble = "";
  const trouble = (what: string) => {
    if (what === lastTrouble) return;
    lastTrouble = what;
    log.error(what);
  };
  /** Asks the master over plain HTTP why the websocket did not open (Bun's WebSocket does not say). */
  const diagnose = async (url: string): Promise<string> => {
    try {
      const res = await fetch(url.replace(/^ws/, "http"), {
        headers: { authorization: `Bearer ${opts.token}` },
        signal: AbortSignal.timeout(5000),
      });
      if (res.status === 401 || res.status === 403) {
        return `the master at ${cfg.worker.master} refused this worker's token (${res.status}): pass a worker token from \`kiln token create --role worker\` with --join`;
      }
      return `the master at ${cfg.worker.master} did not take the worker connection (HTTP ${res.status}); is that URL a Kiln master of this version?`;
    } catch (err) {
      return `cannot reach the master at ${cfg.worker.master}: ${coerceError(err).message}; is it running, and is --master right?`;
    }
  };

  const connect = async () => {
    let backoff = 100;
    while (!stopping) {
      const url = `${cfg.worker.master.replace(/^http/, "ws").replace(/\/$/, "")}/api/v1/worker/connect`;
      let refused: string | null = null;
      const opened = await new Promise<boolean>((resolve) => {
        const sock = new WebSocket(url, {
          headers: { authorization: `Bearer ${opts.token}` },
        } as unknown as string[]);
        sock.binaryType = "arraybuffer";
        let wasOpen = false;
        sock.onopen = () => {
          wasOpen = true;
          ws = sock;
          connected = true;
          for (const o of outbox.values()) o.reported = undefined;
          const running = [...active.values()].filter(
            (a) => !outbox.has(jobKey(a.spec.id, a.spec.attempt)) && a.handle,
          );
          sock.send(
            JSON.stringify({
              type: "worker.hello",
              name,
              arch,
              channels: cfg.worker.channels,
              version: VERSION,
              slots: book.info(),
              running: running.map((a) => ({ jobId: a.spec.id, attempt: a.spec.attempt, slot: a.slot.name })),
              finished: [...outbox.values()].map((o) => ({ jobId: o.job.jobId, attempt: o.job.attempt })),
              instance,
            } satisfies WorkerMessage),
          );
        };
        sock.onmessage = (ev) => {
          try {
            const msg = JSON.parse(String(ev.data)) as MasterMessage;
            if (msg.type === "worker.welcome") {
              // Only a welcome resets the back-off: a connection the master refuses right after it
              // opened must not turn into a reconnect every few milliseconds.
              backoff = 100;
              if (lastTrouble)
                log.info(`connected to ${cfg.worker.master} as ${name} (the trouble above is over)`);
              else log.info(`connected to ${cfg.worker.master} as ${name}`);
              lastTrouble = "";
            }
            if (msg.type === "worker.refused") refused = msg.message;
            onMessage(msg);
          } catch (err) {
            log.error(`bad message from the master: ${coerceError(err).message}`);
          }
        };
        sock.onclose = (ev) => {
          if (ws === sock) {
            ws = null;
            connected = false;
          }
          if (wasOpen && !stopping && !refused && !lastTrouble)
            log.warn(`lost the master (${ev.code}${ev.reason ? ` ${ev.reason}` : ""}); reconnecting`);
          resolve(wasOpen);
        };
        sock.onerror = () => {};
      });
      if (stopping) break;
      if (refused) trouble(`the master refused this worker: ${refused}`);
      else if (!opened) trouble(await diagnose(url));
      // Jitter spreads a fleet's reconnects after a master restart.
      await delay(backoff + Math.random() * backoff * 0.3);
      // A refusal will not change by itself: retry slowly, in case an operator fixes the other side.
      backoff = refused ? Math.min(Math.max(backoff * 2, 10_000), 60_000) : Math.min(backoff * 2, 5000);
    }
  };

  const checkAll = async () => {
    for (const s of slots) {
      const busy = [...active].some(([k, a]) => a.slot.name === s.name && !outbox.has(k));
      if (!busy) await book.check(s).catch(() => {});
    }
  };
  await checkAll();
  const healthTimer = setInterval(() => void checkAll(), cfg.worker.health_interval);

  // The log pump: running jobs' new output, and finished jobs whose log or result did not fit in the
  // socket's buffer last time. Never gives up on a byte: what does not go now goes on a later turn.
  pumpTimer = setInterval(() => {
    for (const [key, a] of active) if (!outbox.has(key)) pump(a);
    const now = Date.now();
    for (const [key, o] of outbox) if (!o.reported || now - o.reported > RESEND_FINISHED) sendFinished(key);
  }, 50);

  const done = connect();
  return {
    name,
    done,
    forceStop() {
      forced?.();
    },
    async stop() {
      const running = () => [...active].filter(([key]) => !outbox.has(key)).map(([, a]) => a);
      if (draining && (running().length > 0 || outbox.size > 0)) {
        // Drained: what runs finishes and its result reaches the master before the worker goes.
        log.info(
          `draining: waiting for ${running().length} running job(s) and ${outbox.size} result(s) before stopping; signal again to stop now`,
        );
        const force = new Promise<void>((r) => {
          forced = r;
        });
        while (running().length > 0 || outbox.size > 0) {
          const stop = await Promise.race([force.then(() => true), delay(200).then(() => false)]);
          if (stop) break;
        }
      }
      stopping = true;
      if (heartbeat) clearInterval(heartbeat);
      if (pumpTimer) clearInterval(pumpTimer);
      clearInterval(healthTimer);
      // Jobs cut short by a stop are not failures of theirs: no outcome is written, and the master is
      // told at once so it re-queues them (retries permitting) instead of waiting for their leases.
      const cut = running();
      if (cut.length > 0) {
        send({
          type: "worker.stopping",
          running: cut.map((a) => ({ jobId: a.spec.id, attempt: a.spec.attempt })),
        });
        log.info(`stopping: ${cut.length} running job(s) ended; the master re-queues them`);
      }
      for (const [key, a] of active) {
        if (outbox.has(key)) continue;
        a.forgotten = true;
        a.handle?.kill();
      }
      await Promise.all([...active.values()].map((a) => a.handle?.result.catch(() => {})));
      await opts.runner.stop?.().catch((err) => log.error(`runner stop: ${coerceError(err).message}`));
      ws?.close();
      await Promise.race([done, delay(1000)]);
      identity.release();
    },
  };
}

import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import type { Config } from "../config/schema.ts";
import { coerceError } from "../lib/errors.ts";
import { logger } from "../lib/log.ts";
import { delay } from "../lib/loop.ts";
import type { JobSpec, Outcome } from "../protocol/job.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import { encodeLogFrame, type MasterMessage, type WorkerMessage } from "../protocol/wire.ts";
import { VERSION } from "../version.ts";
import { startApiProxy } from "./api-proxy.ts";
import { createArtifactBudget } from "./artifact-budget.ts";
import { deliverArtifacts, RetryLater } from "./artifacts.ts";
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
import type { RunHandle, Runner, RunResult, Slot } from "./runner.ts";
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
  stop(): Promise<void>;
  done: Promise<void>;
}

/** The worker's name: worker.name, else the host name made into a valid name. */
export function workerName(cfg: Config): string {
  return (
    cfg.worker.name ||
    hostname()
      .toLowerCase()
      .replace(/[^a-z0-9._-]/g, "-")
  );
}

/** Debian's names for the machine's architecture, which package repositories use too. */
export function defaultArch(): string {
  return process.arch === "x64" ? "amd64" : process.arch;
}

const LOG_CHUNK = 64 * 1024;
// Stop sending log bytes while this much is still queued in the socket; the master asks for the rest.
const MAX_BUFFERED = 4 * 1024 * 1024;

/** Maps how a job ended to its state and reason (SPEC.md "Job states"). */
export function outcomeOf(r: RunResult, a: { cancelled: boolean; timedOut: boolean }): Outcome {
  const base = { peakMemoryBytes: r.peakMemoryBytes, cpuMs: r.cpuMs };
  if (a.timedOut)
    return {
      ...base,
      state: "timed_out",
      reason: null,
      exitCode: null,
      message: "the job ran past its timeout",
    };
  if (a.cancelled) return { ...base, state: "cancelled", reason: null, exitCode: null, message: "cancelled" };
  if (r.exit.kind === "sandbox")
    return { ...base, state: "failed", reason: "sandbox", exitCode: null, message: r.exit.message };
  if (r.limit) {
    const why = {
      oom: "killed: out of memory",
      pids: "hit its process limit",
      no_space: "its scratch space filled up",
      artifact_budget: "its artifacts passed the worker's artifact budget",
    }[r.limit];
    const exitCode = r.exit.kind === "exit" ? r.exit.code : null;
    return { ...base, state: "failed", reason: r.limit, exitCode, message: r.limitMessage ?? why };
  }
  if (r.exit.kind === "signal") {
    return {
      ...base,
      state: "failed",
      reason: "signal",
      exitCode: null,
      message: `killed by signal ${r.exit.signal}`,
    };
  }
  if (r.exit.code === 0) return { ...base, state: "succeeded", reason: null, exitCode: 0, message: null };
  return {
    ...base,
    state: "failed",
    reason: "exit",
    exitCode: r.exit.code,
    message: `exited with status ${r.exit.code}`,
  };
}

/**
 * Starts a worker: sweeps what a previous life left, connects to the master (reconnecting with backoff),
 * runs what it is given through its Runner, streams logs and delivers results through its outbox.
 */
export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const { cfg } = opts;
  const log = logger("worker");
  const name = workerName(cfg);
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
        reject(new Error("the master did not answer in time"));
      }, 30_000);
      templateRequests.set(requestId, (t, error) => {
        clearTimeout(timer);
        if (t) resolve(t);
        else reject(new Error(error ?? `no template ${name}`));
      });
      send({ type: "template.get", requestId, name });
    });
  const outbox = new Map<string, { job: JobDir; outcome: Outcome; logSize: number; delivering?: boolean }>();

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
    if (a && !pump(a)) return;
    if (!existsSync(join(o.job.dir, "artifacts-delivered"))) {
      o.delivering = true;
      deliverArtifacts({
        dir: o.job.dir,
        jobId: o.job.jobId,
        attempt: o.job.attempt,
        master: cfg.worker.master,
        token: opts.token,
        log,
      }).then(
        () => {
          o.delivering = false;
          sendFinished(key);
        },
        (err) => {
          o.delivering = false;
          log.warn(`job ${o.job.jobId}: ${coerceError(err).message}; retrying`);
          if (err instanceof RetryLater) setTimeout(() => sendFinished(key), 2000);
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
  };

  const finish = async (a: Active, result: RunResult) => {
    const key = jobKey(a.spec.id, a.spec.attempt);
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
    if (!slot || busy || held) {
      // The master's view and ours disagree (a hold crossed the assignment on the wire): hand it back.
      const why = !slot ? "unknown" : busy ? "busy" : `held: ${held}`;
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
            throw new Error("this worker's runner cannot attach templates to a job");
          await a.handle.attachTemplate(t);
          return `/kiln/templates/${name}`;
        },
      });
    }
    try {
      a.handle = await opts.runner.start({ spec, slot, dir: job.dir, logFd, env, apiSocket, artifacts });
    } catch (err) {
      await finish(a, {
        exit: { kind: "sandbox", message: coerceError(err).message },
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
        log.error(`the master refused this worker: ${msg.message}`);
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
        if (o) sendFinished(key);
        else pump(a);
        return;
      }
    }
  };

  const connect = async () => {
    let backoff = 100;
    while (!stopping) {
      const url = `${cfg.worker.master.replace(/^http/, "ws").replace(/\/$/, "")}/api/v1/worker/connect`;
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
          backoff = 100;
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
            } satisfies WorkerMessage),
          );
          log.info(`connected to ${cfg.worker.master} as ${name}`);
        };
        sock.onmessage = (ev) => {
          try {
            onMessage(JSON.parse(String(ev.data)) as MasterMessage);
          } catch (err) {
            log.error(`bad message from the master: ${coerceError(err).message}`);
          }
        };
        sock.onclose = (ev) => {
          if (ws === sock) {
            ws = null;
            connected = false;
          }
          if (wasOpen && !stopping)
            log.warn(`lost the master (${ev.code}${ev.reason ? ` ${ev.reason}` : ""}); reconnecting`);
          resolve(wasOpen);
        };
        sock.onerror = () => {};
      });
      if (stopping) break;
      if (!opened) log.debug(`cannot reach ${cfg.worker.master}; retrying in ${backoff}ms`);
      // Jitter spreads a fleet's reconnects after a master restart.
      await delay(backoff + Math.random() * backoff * 0.3);
      backoff = Math.min(backoff * 2, 5000);
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

  pumpTimer = setInterval(() => {
    for (const [key, a] of active) if (!outbox.has(key)) pump(a);
  }, 50);

  const done = connect();
  return {
    name,
    done,
    async stop() {
      stopping = true;
      if (heartbeat) clearInterval(heartbeat);
      if (pumpTimer) clearInterval(pumpTimer);
      clearInterval(healthTimer);
      // Jobs cut short by a stop are not failures of theirs: no outcome is written, so the master
      // re-queues them (retries permitting) when this worker comes back or its lease runs out.
      for (const [key, a] of active) {
        if (outbox.has(key)) continue;
        a.forgotten = true;
        a.handle?.kill();
      }
      await Promise.all([...active.values()].map((a) => a.handle?.result.catch(() => {})));
      await opts.runner.stop?.().catch((err) => log.error(`runner stop: ${coerceError(err).message}`));
      ws?.close();
      await Promise.race([done, delay(1000)]);
    },
  };
}

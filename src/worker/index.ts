import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { Config } from "../config/schema.ts";
import { coerceError } from "../lib/errors.ts";
import { errorFields, logger, withFields } from "../lib/log.ts";
import { delay, runLoop } from "../lib/loop.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";
import type { MasterMessage } from "../protocol/wire.ts";
import type { Runner } from "../runner/contract.ts";
import { VERSION } from "../version.ts";
import { deliverArtifacts } from "./artifacts.ts";
import type { CertificateAuth } from "./certificate.ts";
import { createConnection } from "./connection.ts";
import { claimIdentity, defaultArch, instanceId, workerName } from "./identity.ts";
import { jobKey, removeJobDir, scanJobDirs } from "./job-dir.ts";
import { createJobs } from "./jobs.ts";
import { createLogPump, pumpOnce } from "./log-pump.ts";
import { createOutbox } from "./outbox.ts";
import { repoFileFetcher } from "./repo-files.ts";
import { repoVersionAsker } from "./repo-version.ts";
import { createSlotBook, slotsFromConfig } from "./slots.ts";
import { createTemplateRequests } from "./template-requests.ts";

/*
 * The worker, wired from its parts: the connection to the master (connection.ts), the attempts it runs
 * (jobs.ts), their logs (log-pump.ts) and results (outbox.ts), template requests and its slots. This
 * file only routes the master's messages and runs the background duties.
 */

/** How to start a worker. */
export interface WorkerOptions {
  cfg: Config;
  data: string;
  /** A bearer token over plain HTTP, or the worker's certificate on a TLS master (renewed by a loop here). */
  auth: MasterAuth | CertificateAuth;
  runner: Runner;
  /** Echo job output to this process's stderr as well (debug mode). */
  echo?: boolean;
}

/** A started worker. */
export interface RunningWorker {
  name: string;
  /**
   * Stops the worker. Running jobs are ended and the master told at once, so it re-queues them; a
   * worker an operator drained first lets its jobs finish and deliver their results (until forceStop).
   */
  stop(): Promise<void>;
  /** Ends a draining stop's wait: running jobs are ended and re-queued as by a plain stop. */
  forceStop(): void;
  /** Resolves when the connection loop has ended (after stop). */
  done: Promise<void>;
}

// How often the log pump looks for new output and results to send: short, as `kiln logs -f` waits on it.
const PUMP_EVERY_MS = 50;

/**
 * Starts a worker: sweeps what a previous life left, connects to the master (reconnecting with backoff),
 * runs what it is given through its Runner, streams logs and delivers results through its outbox.
 */
export async function startWorker(opts: WorkerOptions): Promise<RunningWorker> {
  const { cfg, runner } = opts;
  const name = workerName(cfg, opts.data);
  const log = withFields(logger("worker"), { worker: name });
  const identity = claimIdentity(cfg, name);
  const instance = instanceId(opts.data);
  const jobsRoot = join(opts.data, "worker", "jobs");
  const runDir = join(opts.data, "worker", "run");
  mkdirSync(runDir, { recursive: true, mode: 0o700 });

  const { finished, interrupted } = scanJobDirs(jobsRoot);
  if (interrupted.length) {
    log.warn(
      `cleaning up ${interrupted.length} job(s) interrupted by a previous stop; the master re-queues them`,
    );
  }
  await runner.sweep(interrupted.map((d) => d.dir));
  for (const d of interrupted) removeJobDir(d);

  // The parts refer to each other only through what they are given here; the connection's callbacks
  // run once it is started, below, when every part exists.
  const conn = createConnection({
    cfg,
    auth: opts.auth,
    name,
    log,
    hello: () => ({
      type: "worker.hello",
      name,
      arch: cfg.worker.arch || defaultArch(),
      channels: cfg.worker.channels,
      version: VERSION,
      slots: book.info(),
      running: jobs
        .running()
        .filter((r) => r.started)
        .map(({ jobId, attempt, slot }) => ({ jobId, attempt, slot })),
      finished: outbox.list(),
      instance,
    }),
    onOpen: () => outbox.unreport(),
    // Finished attempts keep their leases too until the master has their results.
    heartbeat: () =>
      [...jobs.running(), ...outbox.list()].map((r) => ({ jobId: r.jobId, attempt: r.attempt })),
    onMessage: (msg) => route(msg),
  });
  const book = createSlotBook(join(opts.data, "worker", "holds"), slotsFromConfig(cfg), log, () =>
    conn.send({ type: "worker.slots", slots: book.info() }),
  );
  const pump = createLogPump(conn, Boolean(opts.echo));
  const outbox = createOutbox({
    conn,
    log,
    finished,
    flush: pump.flush,
    deliver: (job, outcome) =>
      deliverArtifacts({
        job,
        outcome,
        master: cfg.worker.master,
        auth: opts.auth,
        log,
      }),
  });
  const templates = createTemplateRequests(conn, runner, log);
  runner.onTemplatesChanged = templates.report;
  const jobs = createJobs({
    cfg,
    runner,
    name,
    jobsRoot,
    runDir,
    book,
    conn,
    pump,
    outbox,
    askTemplate: templates.ask,
    askRepoVersion: repoVersionAsker(cfg.worker.master, opts.auth),
    askRepoFile: repoFileFetcher(cfg.worker.master, opts.auth),
    log,
  });

  const route = (msg: MasterMessage) => {
    switch (msg.type) {
      case "worker.welcome":
        templates.report();
        return;
      case "worker.refused":
      case "worker.draining":
        // The connection has taken these: it says a refusal once per change, with its back-off.
        return;
      case "job.assign":
        // Never rejects: what it cannot run it says in the log and hands back to the master.
        void jobs.start(msg.job, msg.slot);
        return;
      case "job.cancel":
        jobs.cancel(jobKey(msg.jobId, msg.attempt));
        return;
      case "job.forget": {
        // A running attempt ends without an outcome; a finished one's result is dropped.
        const key = jobKey(msg.jobId, msg.attempt);
        if (!jobs.forget(key) && outbox.remove(key)) pump.close(key);
        return;
      }
      case "job.ack": {
        const key = jobKey(msg.jobId, msg.attempt);
        if (outbox.remove(key)) pump.close(key);
        return;
      }
      case "job.log.from": {
        const key = jobKey(msg.jobId, msg.attempt);
        // A finished job from before a restart: reopen its log to resend what the master lacks.
        const finishedDir = outbox.dir(key);
        if (finishedDir) pump.reopen(finishedDir);
        pump.rewind(key, msg.offset);
        if (finishedDir) {
          outbox.unreport(key);
          outbox.report(key);
        } else pump.flush(key);
        return;
      }
      case "template.build":
        templates.build(msg.template);
        return;
      case "template.spec":
        templates.answer(msg.requestId, msg.template, msg.error);
        return;
      case "slot.hold":
        book.hold(msg.slot, msg.reason);
        return;
      case "slot.release": {
        book.release(msg.slot);
        const slot = book.slots.find((s) => s.name === msg.slot);
        if (slot) void book.check(slot);
        return;
      }
    }
  };

  // Idle slots only: a running job's slot is checked when the job ends.
  const checkIdleSlots = async () => {
    for (const s of book.slots) if (!jobs.busy(s.name)) await book.check(s);
  };
  await checkIdleSlots();
  const loops = [
    runLoop(
      { name: "health checks", everyMs: cfg.worker.health_interval, log, waitFirst: true },
      checkIdleSlots,
    ),
    // The log pump never gives up on a byte: what does not go now goes on a later pass.
    runLoop({ name: "log pump", everyMs: PUMP_EVERY_MS, log }, () => pumpOnce(pump, outbox)),
  ];
  const auth = opts.auth;
  if ("renewIfDue" in auth)
    loops.push(
      // The first pass at once (a worker that was off for weeks renews before it is too late); a renewed
      // certificate is presented at once: the master then knows the connection by it.
      runLoop({ name: "certificate renewal", everyMs: auth.checkEveryMs, log }, async () => {
        if (await auth.renewIfDue()) conn.reconnect();
      }),
    );

  const done = conn.start();
  let forced: (() => void) | null = null;
  return {
    name,
    done,
    forceStop() {
      forced?.();
    },
    async stop() {
      const waiting = () => jobs.running().length > 0 || outbox.size() > 0;
      if (conn.draining() && waiting()) {
        // Drained: what runs finishes and its result reaches the master before the worker goes.
        log.info(
          `draining: waiting for ${jobs.running().length} running job(s) and ${outbox.size()} result(s) before stopping; signal again to stop now`,
        );
        const force = new Promise<void>((r) => {
          forced = r;
        });
        while (waiting()) {
          const stop = await Promise.race([force.then(() => true), delay(200).then(() => false)]);
          if (stop) break;
        }
      }
      conn.stop();
      for (const l of loops) l.stop();
      await jobs.stopAll();
      await outbox.settled();
      await runner.stop?.().catch((err) => {
        const e = coerceError(err);
        log.error(`runner stop: ${e.message}`, errorFields(e));
      });
      await conn.close();
      identity.release();
    },
  };
}

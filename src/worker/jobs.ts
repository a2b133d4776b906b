import { closeSync, fstatSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { Config } from "../config/schema.ts";
import { startApiProxy } from "../job-api/api-proxy.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { errorFields } from "../lib/log.ts";
import type { JobSpec } from "../protocol/job.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import { createArtifactBudget } from "../runner/artifact-budget.ts";
import type { RunHandle, Runner, RunResult, Slot } from "../runner/contract.ts";
import type { Connection, JobRef } from "./connection.ts";
import { createJobDir, type JobDir, jobDirOf, jobKey, openLog, removeJobDir } from "./job-dir.ts";
import type { LogPump } from "./log-pump.ts";
import type { Outbox } from "./outbox.ts";
import { JOB_FAULTS, outcomeOf } from "./outcome.ts";
import { withRepoSources } from "./repo-sources.ts";
import type { RepoVersion } from "./repo-version.ts";
import type { SlotBook } from "./slots.ts";

/*
 * Running attempts: an assignment is taken (or handed back when its slot cannot have it), its slot and
 * directory prepared, it runs through the Runner until it ends, and its outcome goes to the outbox; a
 * slot that could not be set up is held and the job handed back without spending a retry.
 */

/** One attempt from its assignment until it ends. */
interface Attempt {
  job: JobDir;
  spec: JobSpec;
  slot: Slot;
  /** The log file (-1 until it is open); the log pump owns it (and closes it). */
  logFd: number;
  handle: RunHandle | null;
  cancelled: boolean;
  timedOut: boolean;
  /** The attempt's timeout: a one-shot deadline, cleared when it ends. */
  timer: Timer | null;
  /** The master no longer wants it (or the worker stops): it ends without an outcome. */
  forgotten: boolean;
  proxy: { close(): void } | null;
  /** Its run has ended and its outcome is being recorded: a stop lets that finish rather than cut it. */
  ending: Promise<void> | null;
}

/** The attempts this worker runs. */
export interface Jobs {
  /** Takes an assignment (job.assign): runs it on `slotName`, or hands it back when that cannot be. */
  start(spec: JobSpec, slotName: string): Promise<void>;
  /** Ends a running attempt as cancelled (job.cancel). */
  cancel(key: string): void;
  /** Ends a running attempt without an outcome (job.forget); false when it is not running. */
  forget(key: string): boolean;
  /** Running attempts with the slot each runs on; `started` once the runner has them. */
  running(): (JobRef & { slot: string; started: boolean })[];
  /** True while an attempt runs on the slot. */
  busy(slotName: string): boolean;
  /** Refuses new assignments, tells the master, ends every running attempt without an outcome, and waits. */
  stopAll(): Promise<void>;
}

/** What running attempts need from the rest of the worker. */
export interface JobsOptions {
  cfg: Config;
  runner: Runner;
  /** The worker's name, for the messages the master shows. */
  name: string;
  /** Where attempts' directories live (DATA/worker/jobs). */
  jobsRoot: string;
  /** Where the job API sockets live (DATA/worker/run). */
  runDir: string;
  book: SlotBook;
  conn: Connection;
  pump: LogPump;
  outbox: Outbox;
  /** Resolves a template name for a running job (`kiln job template NAME`). */
  askTemplate(name: string): Promise<TemplateSpec>;
  /**
   * The newest version of `pkg` in repository `repo` that the job may read (`kiln job version`), asked
   * with the attempt's own credential.
   */
  askRepoVersion(
    jobId: number,
    attempt: number,
    credential: string,
    repo: string,
    pkg: string,
  ): Promise<RepoVersion>;
  /** A file of a repository the job uses (`--use-repo`), from the master with the attempt's credential. */
  askRepoFile(
    credential: string,
    name: string,
    path: string,
    init: { method: "GET" | "HEAD"; headers: Record<string, string>; signal: AbortSignal },
  ): Promise<Response>;
  log: ConsolaInstance;
}

/** The running attempts of a worker; none at first. */
export function createJobs(o: JobsOptions): Jobs {
  const { conn, pump, outbox, book, log } = o;
  const attempts = new Map<string, Attempt>();
  let stopping = false;
  const fields = (a: Attempt) => ({ jobId: a.spec.id, attempt: a.spec.attempt, slot: a.slot.name });

  /** Lets go of an attempt that leaves no outcome: its log, its directory, its place. */
  const drop = (a: Attempt) => {
    const key = jobKey(a.spec.id, a.spec.attempt);
    if (a.timer) clearTimeout(a.timer);
    a.proxy?.close();
    pump.close(key);
    attempts.delete(key);
    removeJobDir(a.job);
  };

  /*
   * The slot could not be set up for the job (cgroups, scratch, the launcher's mounts): the job never
   * ran, so it goes back to the queue without spending a retry, and the slot is held with the reason
   * so it stops failing every job it is given. `kiln release W --slot S` offers it again.
   */
  const slotFailed = (a: Attempt, message: string) => {
    drop(a);
    const reason = `set-up failed for job ${a.spec.id}: ${message}`;
    log.error(
      `slot ${a.slot.name}: ${reason}; the slot is held and the job re-queued (kiln release ${o.name} --slot ${a.slot.name} once fixed)`,
      { ...fields(a), code: "SLOT_SETUP_FAILED" },
    );
    book.hold(a.slot.name, reason);
    conn.send({
      type: "job.refused",
      jobId: a.spec.id,
      attempt: a.spec.attempt,
      message: `slot ${a.slot.name} on ${o.name}: ${reason}`,
    });
  };

  const finish = async (a: Attempt, result: RunResult) => {
    const key = jobKey(a.spec.id, a.spec.attempt);
    if (result.exit.kind === "sandbox" && result.exit.slotFault && !a.forgotten && !a.cancelled) {
      slotFailed(a, result.exit.message);
      return;
    }
    if (a.forgotten) {
      drop(a);
      return;
    }
    if (a.timer) clearTimeout(a.timer);
    a.proxy?.close();
    const outcome = outcomeOf(result, a);
    const ended = performance.now();
    try {
      // From here the outbox has the attempt; the pump keeps its log open until the master acks it.
      await outbox.add(a.job, outcome, fstatSync(a.logFd).size);
    } catch (err) {
      // Not recorded, so not reported: with the attempt gone from the heartbeat, its lease runs out
      // and the master re-queues the job.
      drop(a);
      const e = coerceError(err);
      log.error(
        `job ${a.spec.id}: cannot record its outcome in ${a.job.dir}: ${e.message}; the master re-queues it when its lease ends (free space there)`,
        { ...fields(a), code: "OUTCOME_NOT_RECORDED", ...errorFields(e) },
      );
      return;
    }
    attempts.delete(key);
    if (a.forgotten) {
      // The master withdrew it while its outcome was being written: drop that too.
      if (outbox.remove(key)) pump.close(key);
      return;
    }
    log.info(`job ${a.spec.id}: ${outcome.state}${outcome.reason ? ` (${outcome.reason})` : ""}`, fields(a));
    // The health check runs before the slot is reported free, so a slot a job broke is never offered.
    await book.check(a.slot);
    outbox.report(key);
    log.debug(`job ${a.spec.id}: result recorded and reported`, {
      ...fields(a),
      reportMs: Math.round((performance.now() - ended) * 10) / 10,
    });
  };

  /**
   * The job's environment: a fixed base, where the job's files are, then what the job asked for and its
   * secrets (the master refuses a name that is both). The job's credential is not in it: only the worker
   * uses that, on the job's behalf.
   */
  const envOf = (spec: JobSpec, job: JobDir): Record<string, string> => ({
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    LANG: "C.UTF-8",
    HOME: join(job.dir, "work"),
    KILN_OUT: join(job.dir, "out"),
    KILN_JOB_ID: String(spec.id),
    KILN_ATTEMPT: String(spec.attempt),
    ...spec.env,
    ...spec.secrets,
  });

  /** Gives an assignment back unstarted: the master re-queues it without spending a retry. */
  const handBack = (spec: JobSpec, message: string) =>
    conn.send({ type: "job.refused", jobId: spec.id, attempt: spec.attempt, message });

  /**
   * Makes the attempt's directory and opens its log, off the worker's thread (each can take milliseconds
   * on a busy disk); false (said, and the job handed back) when the disk refuses.
   */
  const prepare = async (a: Attempt): Promise<boolean> => {
    try {
      await createJobDir(a.job, a.spec);
      a.logFd = await openLog(a.job);
      return true;
    } catch (err) {
      removeJobDir(a.job);
      const e = coerceError(err);
      log.error(
        `job ${a.spec.id}: cannot make its directory in ${o.jobsRoot}: ${e.message}; handing it back (free space or fix permissions there)`,
        { ...fields(a), code: "JOB_DIR_FAILED", ...errorFields(e) },
      );
      handBack(a.spec, `${o.name} cannot store the job: ${e.message}`);
      return false;
    }
  };

  const start = async (spec: JobSpec, slotName: string) => {
    const key = jobKey(spec.id, spec.attempt);
    if (attempts.has(key) || outbox.has(key) || pump.following(key)) return;
    const slot = book.slots.find((s) => s.name === slotName);
    const busy = [...attempts.values()].some((a) => a.slot.name === slotName);
    const held = slot ? book.held(slot.name) : null;
    if (!slot || busy || held || stopping) {
      // The master's view and ours disagree (a hold or our stop crossed the assignment on the wire):
      // hand it back.
      const why = stopping ? "stopping" : !slot ? "unknown" : busy ? "busy" : `held: ${held}`;
      log.warn(`job ${spec.id}: slot ${slotName} is ${why}; handing it back`, {
        jobId: spec.id,
        attempt: spec.attempt,
        slot: slotName,
      });
      handBack(spec, `slot ${slotName} on ${o.name} is ${why}`);
      return;
    }
    // The slot is taken from here on, before the first await: a second assignment, a forget, a cancel or
    // a stop that comes while the directory is being made finds the attempt.
    const a: Attempt = {
      job: jobDirOf(o.jobsRoot, spec),
      spec,
      slot,
      logFd: -1,
      handle: null,
      cancelled: false,
      timedOut: false,
      timer: null,
      forgotten: false,
      proxy: null,
      ending: null,
    };
    attempts.set(key, a);
    if (!(await prepare(a))) {
      attempts.delete(key);
      return;
    }
    if (a.forgotten) {
      // Withdrawn (or the worker stops) before it started: it leaves nothing.
      closeSync(a.logFd);
      drop(a);
      return;
    }
    const { job, logFd } = a;
    pump.follow(spec.id, spec.attempt, logFd);
    const artifacts = createArtifactBudget(o.cfg.worker.artifact_budget);
    try {
      // The job API's socket is part of the slot's set-up: if it cannot be made, the slot is at fault.
      const apiSocket = o.runner.name === "sandbox" ? join(o.runDir, `${slot.name}.sock`) : null;
      if (apiSocket) {
        a.proxy = startApiProxy(apiSocket, {
          jobId: spec.id,
          attempt: spec.attempt,
          egress: spec.egress,
          useRepos: spec.useRepos,
          repoFile: (name, path, init) => o.askRepoFile(spec.credential ?? "", name, path, init),
          outDir: join(job.dir, "out"),
          artifacts,
          progress: (percent, message) =>
            conn.send({ type: "job.progress", jobId: spec.id, attempt: spec.attempt, percent, message }),
          markBroken: (message) => book.hold(slot.name, `marked broken by job ${spec.id}: ${message}`),
          repoVersion: (repo, pkg) =>
            o.askRepoVersion(spec.id, spec.attempt, spec.credential ?? "", repo, pkg),
          template: async (name) => {
            const t = await o.askTemplate(name);
            if (!a.handle?.attachTemplate)
              throw new AppError(
                "NO_TEMPLATE_CACHE",
                "this worker's runner cannot attach templates to a job",
              );
            await a.handle.attachTemplate(t);
            return `/kiln/templates/${name}`;
          },
        });
      }
      a.handle = await o.runner.start({
        // Only the sandbox has the API proxy the repositories' sources point at.
        spec: apiSocket ? withRepoSources(spec) : spec,
        slot,
        dir: job.dir,
        logFd,
        env: envOf(spec, job),
        apiSocket,
        artifacts,
      });
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
    conn.send({ type: "job.started", jobId: spec.id, attempt: spec.attempt });
    // A cancel, forget or stop that came while the runner was setting up found no handle to kill.
    if (a.cancelled || a.forgotten) a.handle.kill();
    a.timer = setTimeout(() => {
      a.timedOut = true;
      a.handle?.kill();
    }, spec.timeoutMs);
    a.handle.result.then(
      (r) => {
        a.ending = finish(a, r);
      },
      (err) => {
        a.ending = finish(a, {
          exit: { kind: "sandbox", message: coerceError(err).message },
          limit: null,
          peakMemoryBytes: null,
          cpuMs: null,
        });
      },
    );
  };

  return {
    start,
    cancel(key) {
      const a = attempts.get(key);
      if (a && !a.cancelled) {
        a.cancelled = true;
        a.handle?.kill();
      }
    },
    forget(key) {
      const a = attempts.get(key);
      if (!a) return false;
      a.forgotten = true;
      a.handle?.kill();
      return true;
    },
    running: () =>
      [...attempts.values()].map((a) => ({
        jobId: a.spec.id,
        attempt: a.spec.attempt,
        slot: a.slot.name,
        started: a.handle !== null,
      })),
    busy: (slotName) => [...attempts.values()].some((a) => a.slot.name === slotName),
    async stopAll() {
      stopping = true;
      // Jobs cut short by a stop are not failures of theirs: no outcome is written, and the master is
      // told at once so it re-queues them (retries permitting) instead of waiting for their leases.
      // One whose run has already ended is not cut: its outcome is being written to the outbox (off
      // the event loop), and it goes to the master like any finished attempt's.
      const ending = [...attempts.values()].filter((a) => a.ending !== null).map((a) => a.ending);
      const cut = [...attempts.values()].filter((a) => a.ending === null);
      conn.sayStopping(cut.map((a) => ({ jobId: a.spec.id, attempt: a.spec.attempt })));
      for (const a of cut) {
        a.forgotten = true;
        a.handle?.kill();
      }
      // A run that rejects is ended by finish all the same; here only its end matters.
      await Promise.all(cut.map((a) => a.handle?.result.catch(() => undefined)));
      await Promise.all(ending);
    },
  };
}

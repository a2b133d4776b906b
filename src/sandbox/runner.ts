import {
  closeSync,
  lstatSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  statfsSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import type { Config } from "../config/schema.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { logger } from "../lib/log.ts";
import { formatSize } from "../lib/size.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";
import type { RawExit, RunHandle, Runner, RunRequest, RunResult, Slot } from "../runner/contract.ts";
import { type Acquired, createTemplateCache } from "../templates/cache.ts";
import { fetchArtifact } from "../templates/fetch.ts";
import {
  applyLimits,
  type CgroupLayout,
  detectCgroups,
  isEmpty,
  type JobCgroup,
  killAll,
  openJobCgroup,
  readUsage,
  removeCgroup,
  resetCounters,
  setDeviceRules,
  sweepCgroups,
} from "./cgroups/index.ts";
import { collectArtifacts } from "./collect.ts";
import { installLauncher } from "./launcher.ts";
import {
  destroyScratch,
  releaseHold,
  type Scratch,
  type ScratchConfig,
  scratchSize,
  sweepScratch,
} from "./scratch.ts";
import { createScratchPool, PREMADE_MAX_BYTES } from "./scratch-pool.ts";
import { type SlotKeeper, startSlotKeeper } from "./slot-keeper.ts";
import { parseStatus } from "./status.ts";
import { buildSandboxOpener } from "./template-build.ts";
import { killUid, slotUid } from "./uids.ts";

/*
 * The sandbox runner: each job runs through the native launcher (kiln-sandbox) in its own namespaces,
 * inside its slot's cgroups, on an empty scratch volume, as its slot's unprivileged uid. The slot's keeper
 * (slot-keeper.ts) holds the network namespace, the root of host-root jobs and, up to 1 GiB, the volume
 * across jobs. A slot is handed back only after its cleanup has finished: processes gone, scratch emptied
 * (or destroyed), cgroup empty.
 */

/** Port of $KILN_API inside every sandbox (its own network namespace, so it never clashes). */
export const API_PORT = 7070;

export interface SandboxOptions {
  cfg: Config;
  data: string;
  worker: string;
  /** Paths on the host root the job must not see (data dirs, keys, tokens). */
  masks: string[];
  /** The worker's credentials, to fetch job artifacts that tarball templates are made from. */
  auth: MasterAuth;
}

interface SlotState {
  cg: JobCgroup;
  uid: number;
  /** What the slot keeps across its jobs (its network namespace, its scratch volume); null until needed. */
  keeper: SlotKeeper | null;
}

export async function createSandboxRunner(o: SandboxOptions): Promise<Runner> {
  if (process.getuid?.() !== 0) {
    throw new AppError(
      "SANDBOX_NEEDS_ROOT",
      'the sandbox runner needs root (namespaces, cgroups, loop devices); run the worker as root, or set worker.runner = "process" for development without isolation',
    );
  }
  const launcher = await installLauncher(join(o.data, "worker", "bin"));
  const layout: CgroupLayout = detectCgroups();
  const cgParent = `${o.cfg.sandbox.cgroup_parent}/${o.worker}`;
  const scratchCfg: ScratchConfig = {
    backend: o.cfg.sandbox.scratch as ScratchConfig["backend"],
    dir: join(o.data, "worker", "scratch"),
    volumeGroup: o.cfg.sandbox.volume_group || undefined,
  };
  const slots = new Map<string, SlotState>();
  const log = logger("sandbox");
  // Names stay unique with any slot name: the sequence number is the pool's, not the slot's.
  const scratchName = (slot: string, seq: number) =>
    `${`${o.worker}-${slot}`.replace(/[^a-z0-9-]/g, "-").slice(0, 48)}-${seq}`;
  const scratchPool = createScratchPool(scratchCfg, scratchName, (message, serious) =>
    serious ? log.warn(message) : log.debug(message),
  );
  const uidOf = (slot: Slot) => slotUid(o.cfg.sandbox.uid_base, o.worker, slot.index);
  // Loop volumes up to this size stay with the slot's keeper and are emptied after each job; bigger ones
  // (and the other backends) are made for each job, as before.
  const slotVolume = (size: number) => scratchCfg.backend === "loop" && size <= PREMADE_MAX_BYTES;
  const stopKeeper = async (state: SlotState) => {
    const k = state.keeper;
    state.keeper = null;
    if (!k) return;
    await k.stop();
    if (k.volume) await scratchPool.release(k.volume);
  };
  /** The slot's keeper, with a volume of `size` when the job's scratch is one a keeper holds. */
  const keeperFor = async (slot: Slot, state: SlotState, size: number | null): Promise<SlotKeeper> => {
    const k = state.keeper;
    const want = size === null ? null : scratchSize(size);
    if (k?.alive() && (want === null || k.volume?.sizeBytes === want)) return k;
    await stopKeeper(state);
    const volume = want === null ? null : await scratchPool.take(slot.name, want);
    const dir = join(scratchCfg.dir, "slots", slot.name.replace(/[^A-Za-z0-9_-]/g, "-"));
    try {
      state.keeper = await startSlotKeeper(launcher, dir, volume, {
        kilnBin: process.execPath,
        masks: o.masks,
        devices: slot.devices,
      });
    } catch (err) {
      if (volume) await destroyScratch(scratchCfg, volume).catch(() => {});
      throw err;
    }
    return state.keeper;
  };

  const slotState = (slot: Slot): SlotState => {
    let s = slots.get(slot.name);
    if (!s) {
      s = { cg: openJobCgroup(layout, `${cgParent}/${slot.name}`), uid: uidOf(slot), keeper: null };
      slots.set(slot.name, s);
    }
    return s;
  };

  const templates = createTemplateCache({
    dir: join(o.data, "worker", "templates"),
    budgetBytes: o.cfg.templates.cache_size,
    log: logger("templates"),
    changed: () => runner.onTemplatesChanged?.(),
    openSandbox: buildSandboxOpener({
      launcher,
      layout,
      cgParent,
      masks: o.masks,
      // Beside the jobs' API sockets: a Unix socket path has room for 107 bytes only.
      runDir: join(o.data, "worker", "run"),
      timeoutMs: o.cfg.templates.build_timeout,
      memoryBytes: o.cfg.templates.build_memory,
      pids: o.cfg.templates.build_pids,
    }),
    fetchArtifact: (job, name, dest) => fetchArtifact(o.cfg.worker.master, o.auth, job, name, dest),
  });
  const runner: Runner = {
    name: "sandbox",
    templates,
    async start(req: RunRequest): Promise<RunHandle> {
      const { spec, slot } = req;
      // When each step of the attempt ended (performance.now()), for the debug record of its timings.
      const at = { start: performance.now(), spawned: 0, ready: 0, ended: 0, held: 0, exited: 0, clean: 0 };
      const state = slotState(slot);
      const size = spec.scratchBytes ?? o.cfg.sandbox.scratch_size;
      if (size > o.cfg.sandbox.scratch_max) {
        throw new AppError(
          "SCRATCH_TOO_BIG",
          `--scratch ${formatSize(size)} is more than this worker allows (${formatSize(o.cfg.sandbox.scratch_max)})`,
        );
      }
      // Everything that can fail without side effects goes first, so a refusal leaves nothing to undo.
      const groups = slot.groups.map(resolveGroup).join(",");
      let root: Acquired | null = null;
      if (spec.root !== "host") {
        if (!spec.template) {
          throw new AppError(
            "NO_TEMPLATE",
            `template ${spec.root} no longer exists on the master: see \`kiln template ls\``,
          );
        }
        // A first use builds the tree; the job's log shows the build, and its timeout starts after it.
        root = await templates.acquire(spec.template, (c) => {
          writeSync(req.logFd, typeof c === "string" ? Buffer.from(c) : c);
        });
      }
      const attached: Acquired[] = root ? [root] : [];
      if (spec.setup !== null && !(root && spec.writableRoot)) {
        root?.release();
        throw new AppError(
          "SETUP_NEEDS_TEMPLATE",
          "this job has a setup but no writable template root to install into: submit it with --root TEMPLATE",
        );
      }
      // The launcher joins the job's cgroups before it mounts the scratch volume (attaching its loop
      // device first unless that was done ahead), so on v1 the devices controller must let it; withdrawn
      // as soon as the setup (or the command) runs.
      let setupRules: string[] = [];
      let made: Scratch | null = null;
      let keeper: SlotKeeper | null = null;
      const onSlotVolume = slotVolume(size);
      let child: Subprocess<"ignore", number, number>;
      try {
        resetCounters(state.cg);
        applyLimits(state.cg, {
          memoryBytes: spec.memoryBytes ?? slot.memory ?? undefined,
          cpus: spec.cpus ?? slot.cpus ?? undefined,
          pids: spec.pids ?? slot.pids ?? undefined,
          devices: slot.devices,
        });
        keeper = await keeperFor(slot, state, onSlotVolume ? size : null);
        if (!onSlotVolume) {
          made = await scratchPool.take(slot.name, size);
          setupRules = scratchRules(made);
          setDeviceRules(state.cg, setupRules, true);
        }
        const args = [
          launcher,
          "--uid",
          String(state.uid),
          "--gid",
          String(state.uid),
          "--groups",
          groups,
          "--hostname",
          `kiln-${spec.id}`,
          // A host-root job starts from the root its slot's keeper built once (the masks, devices and kiln
          // binary below are in it); a template root is built for the job.
          ...(root ? ["--kiln-bin", process.execPath, "--root", root.root] : []),
          ...(root && spec.writableRoot ? ["--overlay-root"] : []),
          // Run as root on that overlay before the command (see src/sandbox/helper/README.md "Setup").
          ...(spec.setup !== null ? ["--setup", spec.setup] : []),
          "--templates",
          "--status-fd",
          "3",
          "--hold-fd",
          "4",
          ...state.cg.procsFiles.flatMap((f) => ["--cgroup", f]),
          ...(root ? o.masks.flatMap((m) => ["--mask", m]) : []),
          ...(root ? slot.devices.flatMap((d) => ["--dev", d]) : []),
          ...(req.apiSocket ? ["--api", `${API_PORT}:${req.apiSocket}`] : []),
          ...keeper.launchArgs({ skeleton: !root, volume: !made }),
          ...(made ? scratchArgs(made) : []),
          "--",
          ...spec.command,
        ];
        const env: Record<string, string> = {
          ...req.env,
          HOME: "/tmp/home",
          TMPDIR: "/tmp",
          KILN_OUT: "/tmp/out",
          PATH: `${req.env.PATH ?? "/usr/bin:/bin"}:/kiln/bin`,
          ...(req.apiSocket ? { KILN_API: `http://127.0.0.1:${API_PORT}` } : {}),
        };
        if (req.apiSocket && spec.egress.length > 0) {
          for (const k of ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"])
            env[k] = `http://127.0.0.1:${API_PORT}`;
        }
        child = Bun.spawn(args, { env, stdio: ["ignore", req.logFd, req.logFd, "pipe", "pipe"] });
        at.spawned = performance.now();
        // The next job on this slot will most likely ask for the same size: make its volume while this
        // one runs, so formatting it is off that job's path (a volume the keeper holds is reused instead).
        if (made) scratchPool.prepare(slot.name, size);
      } catch (err) {
        // Set-up failed before the launcher ran: give back what was taken, or the slot would leak it.
        root?.release();
        if (made) await destroyScratch(scratchCfg, made).catch(() => {});
        throw err;
      }
      const scratch = made;
      const statusFd = child.stdio[3] as unknown as number;
      const holdFd = child.stdio[4] as unknown as number;
      let pid1 = 0;
      let final = null as RawExit | null;
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        try {
          closeSync(holdFd);
        } catch {
          // Already closed.
        }
      };
      let noSpace = false;
      // While PID 1 holds the namespace open, the scratch is still mounted: collect artifacts and see
      // whether it filled up, then let it go.
      const finishHeld = async () => {
        if (pid1) {
          const tmp = `/proc/${pid1}/root/tmp`;
          try {
            const st = statfsSync(tmp);
            // "Full" allows for a last write that did not fit whole: under 5% (at least 1 MiB) left.
            const free = st.bavail * st.bsize;
            noSpace = free <= Math.max(1 << 20, 0.05 * st.blocks * st.bsize) || st.ffree === 0;
          } catch {
            // The namespace is already gone.
          }
          if (!emptyOut(`${tmp}/out`, state.uid)) {
            await collectArtifacts({
              launcher,
              pid1,
              uid: state.uid,
              to: join(req.dir, "out"),
              budget: req.artifacts,
              note: (line) => writeSync(req.logFd, `kiln: ${line}\n`),
              log,
            });
          }
        }
        release();
      };
      const statusDone = (async () => {
        let buf = "";
        for await (const chunk of Bun.file(statusFd).stream()) {
          buf += new TextDecoder().decode(chunk);
          let nl = buf.indexOf("\n");
          while (nl >= 0) {
            const st = parseStatus(buf.slice(0, nl));
            buf = buf.slice(nl + 1);
            nl = buf.indexOf("\n");
            if (!st) continue;
            if ("warning" in st) log.warn(`job ${spec.id} on ${slot.name}: ${st.warning}`);
            else if ("ready" in st || "setup" in st) {
              // The scratch is mounted once the setup (or the command) runs: no loop device from now on,
              // and the job's mount holds the scratch device: it goes when the job's namespace does.
              if (!pid1) {
                setDeviceRules(state.cg, setupRules, false);
                if (scratch) releaseHold(scratch);
              }
              pid1 = "ready" in st ? st.ready : st.setup;
              if ("ready" in st) at.ready = performance.now();
            } else {
              // A launch that failed before the mount never takes the scratch device: let it clear, as
              // the launcher waits for that before it exits.
              if (scratch) releaseHold(scratch);
              if (st.note) writeSync(req.logFd, st.note);
              final = st.exit;
              at.ended = performance.now();
              await finishHeld();
              at.held = performance.now();
            }
          }
        }
      })();
      const result = (async (): Promise<RunResult> => {
        // Whatever happens below, the job's templates stop counting as in use once it is gone.
        const releaseTemplates = () => {
          for (const t of attached) t.release();
        };
        const code = await child.exited;
        await statusDone.catch(() => {});
        release();
        at.exited = performance.now();
        let exit: RawExit = (final as RawExit | null) ?? {
          kind: "sandbox",
          message: `the sandbox launcher ended without a status (exit ${code})`,
        };
        if (final === null && child.signalCode) exit = { kind: "signal", signal: 9 };
        // Whatever the launcher said, nothing of the job may survive it: what is still in the job's
        // cgroups is killed. The launcher returns only once the job's pid namespace is gone, which takes
        // every process in it along, and a job cannot leave its cgroups; so the scan of every process on
        // the host for the slot's uid is needed only when that did not go as it should: no final status,
        // or something left in the cgroups.
        const leftInCgroups = !isEmpty(state.cg);
        if (leftInCgroups) await killAll(state.cg, 10_000).catch(() => {});
        if (leftInCgroups || final === null) await killUid(state.uid);
        const usage = readUsage(state.cg);
        releaseTemplates();
        if (scratch) {
          await scratchPool.release(scratch).catch((err) => {
            throw new AppError(
              "SCRATCH_CLEANUP",
              `could not remove the scratch of ${slot.name}: ${coerceError(err).message}`,
            );
          });
        }
        // Every process of the job is gone: the keeper empties its volume for the next job. A volume it
        // could not empty is never handed on: the keeper and its volume go, and the next job gets fresh
        // ones; so does it when the host's mounts changed since the keeper made its copy of them.
        if (keeper) {
          const wiped = await keeper.wipe().catch((err) => {
            log.warn(
              `job ${spec.id} on ${slot.name}: the slot's scratch volume could not be emptied (${coerceError(err).message}); a new one is made for the next job`,
            );
            return "failed" as const;
          });
          if (wiped !== "wiped") await stopKeeper(state);
        }
        at.clean = performance.now();
        const took = (from: number, to: number) =>
          from && to ? Math.round((to - from) * 10) / 10 : undefined;
        log.debug(`job ${spec.id} on ${slot.name}: timings`, {
          jobId: spec.id,
          slot: slot.name,
          setupMs: took(at.start, at.spawned),
          launchMs: took(at.spawned, at.ready),
          runMs: took(at.ready, at.ended),
          collectMs: took(at.ended, at.held),
          teardownMs: took(at.held, at.exited),
          cleanupMs: took(at.exited, at.clean),
        });
        // The kernel's counters explain a failure better than the exit status: an OOM kill fails the job
        // even when its shell exited 0 (cgroup v1 kills one process, not the job).
        const clean = exit.kind === "exit" && (exit as { code: number }).code === 0;
        let limit: RunResult["limit"] = null;
        if (usage.oomKills > 0) limit = "oom";
        else if (usage.pidsLimitHit > 0 && !clean) limit = "pids";
        else if (noSpace && !clean) limit = "no_space";
        else if (req.artifacts.message()) limit = "artifact_budget";
        const limitMessage = limit === "artifact_budget" ? req.artifacts.message() : null;
        return {
          exit,
          limit,
          limitMessage,
          peakMemoryBytes: usage.peakMemoryBytes || null,
          cpuMs: usage.cpuMs,
        };
      })();
      return {
        get pid() {
          return pid1 || undefined;
        },
        async attachTemplate(t) {
          if (!pid1) throw new AppError("NOT_RUNNING", "the job's sandbox is not running");
          const got = await templates.acquire(t, (c) => {
            writeSync(req.logFd, typeof c === "string" ? Buffer.from(c) : c);
          });
          attached.push(got);
          const p = Bun.spawn(
            [launcher, "--inject", String(pid1), "--ro-bind", `${got.root}:/kiln/templates/${t.name}`],
            {
              stdout: "ignore",
              stderr: "pipe",
            },
          );
          const [err, code] = await Promise.all([new Response(p.stderr).text(), p.exited]);
          if (code !== 0)
            throw new AppError("TEMPLATE_ATTACH", `could not attach template ${t.name}: ${err.trim()}`);
        },
        result,
        kill() {
          child.kill("SIGKILL");
          void killAll(state.cg, 10_000).catch(() => {});
        },
      };
    },
    async stop() {
      for (const s of slots.values()) await stopKeeper(s);
      await scratchPool.drain();
      for (const s of slots.values()) await removeCgroup(s.cg);
      slots.clear();
      // Leave no empty parents behind either (PARENT/WORKER, then PARENT if no other worker uses it).
      const roots = new Set([...Object.values(layout.v1), ...(layout.unified ? [layout.unified] : [])]);
      for (const root of roots) {
        for (const dir of [join(root, cgParent), join(root, o.cfg.sandbox.cgroup_parent)]) {
          try {
            rmdirSync(dir);
          } catch {
            // Not empty (another worker) or already gone.
          }
        }
      }
    },
    async sweep() {
      // Order matters: processes first (they pin mounts and loop devices), then cgroups, then volumes.
      const killed = await killUid(slotUid(o.cfg.sandbox.uid_base, o.worker, 0), 1024);
      const removed = await sweepCgroups(layout, cgParent);
      const halfBuilt = templates.sweep();
      if (halfBuilt.length) log.warn(`sweep: removed ${halfBuilt.length} half-built template tree(s)`);
      const volumes = await sweepScratch(scratchCfg);
      if (killed || removed.length || volumes.length) {
        log.warn(
          `sweep: killed ${killed} leftover process(es), removed ${removed.length} cgroup(s) and ${volumes.length} scratch volume(s)`,
        );
      }
    },
  };
  return runner;
}

function scratchRules(s: Scratch): string[] {
  // A loop device attached ahead is the one block device to open. Otherwise the launcher attaches one:
  // loop-control is c 10:237 and loop devices b 7:N (Documentation/admin-guide/devices.txt). LVM volumes
  // are device-mapper nodes, whose block major is dynamic, so any block device is allowed for lvm.
  if (s.backend === "loop" && s.loop) {
    const { rdev } = statSync(s.loop.device, { bigint: true });
    // glibc's dev_t encoding (sys/sysmacros.h), as in cgroups/limits.ts.
    const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
    const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
    return [`b ${major}:${minor} rwm`];
  }
  if (s.backend === "loop") return ["c 10:237 rwm", "b 7:* rwm"];
  if (s.backend === "lvm") return ["b *:* rwm"];
  return [];
}

/*
 * Whether the job left nothing in $KILN_OUT, so there is nothing to collect and no collector to run (most
 * jobs). Safe to look at from here: every process of the job is gone by the time the launcher says how it
 * ended, so nothing can change the directory meanwhile, and lstat does not follow a link the job put in
 * its place. Anything but an empty directory the job itself could read goes to the collector as before,
 * which says what it skips.
 */
function emptyOut(out: string, uid: number): boolean {
  try {
    const st = lstatSync(out);
    return st.isDirectory() && st.uid === uid && (st.mode & 0o500) === 0o500 && readdirSync(out).length === 0;
  } catch {
    return false;
  }
}

function scratchArgs(s: Scratch): string[] {
  if (s.backend === "loop") return s.loop ? ["--scratch-dev", s.loop.device] : ["--scratch-file", s.file];
  if (s.backend === "lvm") return ["--scratch-dev", s.device];
  return ["--scratch-tmpfs", String(s.sizeBytes)];
}

/** A group name or gid from the slot config, as a gid (names through /etc/group, like initgroups). */
function resolveGroup(g: string): string {
  if (/^\d+$/.test(g)) return g;
  const line = readFileSync("/etc/group", "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${g}:`));
  if (!line) throw new AppError("UNKNOWN_GROUP", `slot group ${g} does not exist on this host`);
  return line.split(":")[2]!;
}

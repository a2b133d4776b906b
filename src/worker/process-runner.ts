import { accessSync, constants, mkdirSync, readFileSync, statSync, writeFileSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { RunHandle, Runner, RunRequest, RunResult } from "../runner/contract.ts";

/*
 * The plain-process runner: the job's command as a child of the worker in its own session and process
 * group, killed as a group. It isolates nothing; the sandbox runner is what production uses.
 */

const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGKILL: 9,
  SIGTERM: 15,
  SIGSEGV: 11,
  SIGABRT: 6,
  SIGPIPE: 13,
};

function killGroup(pid: number) {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // Already gone.
  }
}

/** The process start time from /proc, so a recorded pid is not confused with a reused one. */
function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** Why `cmd` cannot be executed (looked up in `path` as execvp would), or null when it can. */
function cannotRun(cmd: string, path: string, cwd: string): string | null {
  const candidates = cmd.includes("/")
    ? [resolve(cwd, cmd)]
    : path.split(":").map((d) => join(d || ".", cmd));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return null;
    } catch {
      // Not this one.
    }
  }
  return cmd.includes("/") ? `${cmd}: no such executable file` : `${cmd}: not found in PATH (${path})`;
}

/** The plain-process runner (`worker.runner = "process"`): no isolation, for development and tests. */
export function createProcessRunner(): Runner {
  return {
    name: "process",
    async start(req: RunRequest): Promise<RunHandle> {
      // A setup runs as root on an overlay of a template: nothing this runner could give it safely.
      if (req.spec.setup !== null) {
        throw new AppError(
          "SETUP_NEEDS_SANDBOX",
          'this job has a setup, which only the sandbox runner can run (this worker has worker.runner = "process"): run it on a worker that runs as root with the sandbox',
        );
      }
      const work = join(req.dir, "work");
      mkdirSync(work, { recursive: true });
      mkdirSync(req.env.KILN_OUT!, { recursive: true });
      // The job's own mistake (a command that is not there or not executable) ends it like a shell
      // would, with 127 and the reason in its log, not as a failure of the worker.
      const cannot = cannotRun(req.spec.command[0]!, req.env.PATH ?? "", work);
      if (cannot) {
        writeSync(req.logFd, `kiln: cannot run the job's command: ${cannot}\n`);
        return {
          result: Promise.resolve({
            exit: { kind: "exit", code: 127 },
            limit: null,
            peakMemoryBytes: null,
            cpuMs: null,
          }),
          kill() {},
        };
      }
      const child = Bun.spawn(req.spec.command, {
        cwd: work,
        env: req.env,
        stdin: "ignore",
        stdout: req.logFd,
        stderr: req.logFd,
        // A new session makes the child a process-group leader, so the group can be killed as a whole.
        detached: true,
      });
      writeFileSync(join(req.dir, "pid"), `${child.pid} ${startTime(child.pid) ?? ""}\n`);
      const result: Promise<RunResult> = child.exited.then(() => {
        killGroup(child.pid);
        const signal = child.signalCode ? (SIGNALS[child.signalCode] ?? 9) : null;
        return {
          exit: signal !== null ? { kind: "signal", signal } : { kind: "exit", code: child.exitCode ?? 0 },
          limit: null,
          // Bun reports maxRSS in bytes. It is the child's own peak; the sandbox runner reads the cgroup's.
          peakMemoryBytes: child.resourceUsage()?.maxRSS ?? null,
          cpuMs: (() => {
            const u = child.resourceUsage();
            return u ? Math.round(Number(u.cpuTime.total) / 1000) : null;
          })(),
        };
      });
      return {
        result,
        kill() {
          killGroup(child.pid);
        },
      };
    },
    async sweep(dirs: string[]) {
      for (const dir of dirs) {
        try {
          const [pid, start] = readFileSync(join(dir, "pid"), "utf8").trim().split(" ");
          if (pid && start && startTime(Number(pid)) === start) killGroup(Number(pid));
        } catch {
          // No pid file: the job never started.
        }
      }
    },
  };
}

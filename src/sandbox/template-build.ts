import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { startApiProxy } from "../job-api/api-proxy.ts";
import { formatDuration } from "../lib/duration.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { createArtifactBudget } from "../runner/artifact-budget.ts";
import type { RawExit } from "../runner/contract.ts";
import type { BuildSandbox, BuildStep, OpenBuildSandbox, Sink } from "../templates/build.ts";
import {
  applyLimits,
  type CgroupLayout,
  killAll,
  openJobCgroup,
  readUsage,
  removeCgroup,
  resetCounters,
} from "./cgroups/index.ts";
import { parseStatus } from "./status.ts";

/*
 * Runs the steps of a template build through the launcher's build mode (`--build`, see
 * src/sandbox/helper/README.md): real uid 0 with eight capabilities, NoNewPrivs and the seccomp filter, in
 * fresh pid, mount, ipc, uts, net and cgroup namespaces, inside one cgroup per build with the memory and
 * pids limits of [templates], and one deadline (templates.build_timeout) for all its steps. The only way
 * out of the network namespace is an egress proxy (the job API proxy with no job) that reaches the hosts
 * the step names and nothing else. A step is either "host" (the host's root read-only and masked as for
 * jobs, the tree writable at /target: debootstrap's first stage, tar) or "tree" (the tree itself is `/`,
 * writable: debootstrap's second stage, apt, the operator's scripts).
 */

// The proxy's port inside the build's own network namespace; nothing else listens there.
const PROXY_PORT = 3128;
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

export interface BuildSandboxOptions {
  launcher: string;
  layout: CgroupLayout;
  /** Where the worker's cgroups live (PARENT/WORKER); each build gets a child of its own. */
  cgParent: string;
  /** Host paths a host step must not see (the data dirs, keys, tokens), as for jobs. */
  masks: string[];
  /** A private directory for the proxy's socket and its (discarded) uploads. */
  runDir: string;
  timeoutMs: number;
  memoryBytes: number;
  pids: number;
}

/** Returns what the template cache calls to open a sandbox for one build (see BuildSandbox). */
export function buildSandboxOpener(o: BuildSandboxOptions): OpenBuildSandbox {
  mkdirSync(o.runDir, { recursive: true, mode: 0o700 });
  return async (name, hash) => {
    const id = `build-${hash.slice(0, 12)}`;
    const cg = openJobCgroup(o.layout, `${o.cgParent}/${id}`);
    try {
      applyLimits(cg, { memoryBytes: o.memoryBytes, pids: o.pids });
      resetCounters(cg);
    } catch (err) {
      await removeCgroup(cg, 10_000);
      throw err;
    }
    const deadline = Date.now() + o.timeoutMs;
    const sb: BuildSandbox = {
      async step(step, sink) {
        const left = deadline - Date.now();
        if (left <= 0) throw timedOut(name, o.timeoutMs);
        const sock = join(o.runDir, `${id}.sock`);
        const outDir = join(o.runDir, `${id}.out`);
        const proxy = startApiProxy(sock, {
          jobId: 0,
          attempt: 0,
          egress: step.egress,
          outDir,
          // A build leaves a tree, not artifacts: every upload is refused.
          artifacts: createArtifactBudget(0),
          progress: () => {},
          markBroken: (message) =>
            sink(`--- kiln: a template build cannot mark a slot broken (${message}) ---\n`),
          template: () =>
            Promise.reject(new AppError("NOT_A_JOB", "a template build cannot attach templates")),
          repoVersion: () =>
            Promise.reject(new AppError("NOT_A_JOB", "a template build has no repositories to ask")),
        });
        let failure: unknown = null;
        try {
          await runStep(o, cg.procsFiles, sock, step, sink, left, name);
        } catch (err) {
          failure = err;
        } finally {
          proxy.close();
          rmSync(outDir, { recursive: true, force: true });
          // Whatever the step did, nothing of it outlives it (the pid namespace's end normally sees to it).
          await killAll(cg, 10_000);
        }
        // The kernel's counter explains a failure better than the exit status, and an OOM kill fails the
        // build even when the step's shell exited 0 (cgroup v1 kills one process, not the build).
        const usage = readUsage(cg);
        if (usage.oomKills > 0) {
          throw new AppError(
            "TEMPLATE_BUILD_OOM",
            `the build ran out of memory (templates.build_memory is ${formatSize(o.memoryBytes)}): raise it, or make the template smaller`,
          );
        }
        if (failure && usage.pidsLimitHit > 0) {
          throw new AppError(
            "TEMPLATE_BUILD_PIDS",
            `the build hit its process limit (templates.build_pids is ${o.pids}): ${coerceError(failure).message}`,
          );
        }
        if (failure) throw failure;
      },
      close: () => removeCgroup(cg, 10_000),
    };
    return sb;
  };
}

const timedOut = (name: string, ms: number) =>
  new AppError(
    "TEMPLATE_BUILD_TIMEOUT",
    `the build of template ${name} took longer than templates.build_timeout (${formatDuration(ms)}) and was stopped`,
  );

async function runStep(
  o: BuildSandboxOptions,
  cgroups: string[],
  sock: string,
  step: BuildStep,
  sink: Sink,
  leftMs: number,
  name: string,
): Promise<void> {
  const where =
    step.where === "tree"
      ? ["--root", step.tree, "--rw-root"]
      : ["--bind", `${step.tree}:/target`, ...o.masks.flatMap((m) => ["--mask", m])];
  const args = [
    o.launcher,
    "--build",
    "--hostname",
    "kiln-template",
    "--chdir",
    "/",
    "--status-fd",
    "3",
    // /tmp is a tmpfs, charged to the build's memory like everything else it holds.
    "--scratch-tmpfs",
    String(o.memoryBytes),
    ...cgroups.flatMap((f) => ["--cgroup", f]),
    "--api",
    `${PROXY_PORT}:${sock}`,
    ...where,
    ...(step.roBinds ?? []).flatMap(([src, dst]) => ["--ro-bind", `${src}:${dst}`]),
    "--",
    ...step.command,
  ];
  const proxy = `http://127.0.0.1:${PROXY_PORT}`;
  const env: Record<string, string> = {
    PATH,
    LANG: "C.UTF-8",
    HOME: "/root",
    DEBIAN_FRONTEND: "noninteractive",
    http_proxy: proxy,
    https_proxy: proxy,
    HTTP_PROXY: proxy,
    HTTPS_PROXY: proxy,
    ...step.env,
  };
  sink(`$ ${step.command.join(" ")}\n`);
  const child = Bun.spawn(args, { env, stdio: ["ignore", "pipe", "pipe", "pipe"] });
  let timeout = false;
  const timer = setTimeout(() => {
    timeout = true;
    // The helper's death takes PID 1 and with it the whole namespace (PDEATHSIG); the cgroup kill is the
    // check that it did.
    child.kill("SIGKILL");
  }, leftMs);
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) sink(c);
  };
  let final: RawExit | null = null;
  const statusFd = child.stdio[3] as unknown as number;
  const status = (async () => {
    const text = await new Response(Bun.file(statusFd).stream()).text();
    for (const line of text.split("\n")) {
      const st = parseStatus(line);
      if (st && "exit" in st) {
        if (st.note) sink(st.note);
        final = st.exit;
      }
    }
  })();
  try {
    await Promise.all([pump(child.stdout), pump(child.stderr), child.exited, status]);
  } catch (err) {
    throw new AppError("TEMPLATE_BUILD_FAILED", `the build's output was lost: ${coerceError(err).message}`, {
      cause: err,
    });
  } finally {
    clearTimeout(timer);
  }
  if (timeout) throw timedOut(name, o.timeoutMs);
  const exit = final as RawExit | null;
  if (exit?.kind === "exit" && exit.code === 0) return;
  const what = step.command[0];
  const why =
    exit === null
      ? `the sandbox launcher ended without a status (exit ${child.exitCode ?? child.signalCode})`
      : exit.kind === "exit"
        ? `${what} exited with status ${exit.code}`
        : exit.kind === "signal"
          ? `${what} was killed by signal ${exit.signal}`
          : exit.message;
  throw new AppError("TEMPLATE_BUILD_FAILED", why);
}

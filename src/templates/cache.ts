import {
  appendFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { AppError, coerceError } from "../lib/errors.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import {
  buildTree,
  DEBOOTSTRAP_LOG,
  type FetchArtifact,
  type OpenBuildSandbox,
  readInTree,
  type Sink,
} from "./build.ts";

/*
 * A worker's template cache: DIR/HASH/root is a finished tree, DIR/HASH/complete.json says it is finished
 * (written last, so a tree half-built when the worker crashed is never used: it has no complete.json and
 * the start-up sweep removes it). Builds happen in DIR/HASH.building and are renamed into place. Two jobs
 * asking for the same template wait for the one build (single flight). Trees nobody uses are evicted,
 * least recently used first, when the cache grows past its budget. A failed build's tree is removed, but
 * its log (with debootstrap's own log appended) is kept as DIR/failed/NAME-HASH12.log, which the error
 * message names; the newest KEEP_FAILED_LOGS are kept.
 */

const KEEP_FAILED_LOGS = 20;

export interface Acquired {
  root: string;
  release(): void;
}

export interface CachedTemplate {
  hash: string;
  name: string;
  sizeBytes: number;
}

export interface TemplateCache {
  /** The tree of `spec`, built first if needed; `sink` receives the build's output if this call builds. */
  acquire(spec: TemplateSpec, sink?: Sink): Promise<Acquired>;
  list(): CachedTemplate[];
  /** Removes half-built trees and anything unreadable; run at worker start. */
  sweep(): string[];
  /** Removes least recently used trees that no job holds until the cache fits its budget. */
  evict(): string[];
}

interface Complete {
  hash: string;
  name: string;
  sizeBytes: number;
  builtAt: string;
}

async function treeSize(dir: string): Promise<number> {
  const out = await new Response(
    Bun.spawn(["du", "-sb", dir], { stdout: "pipe", stderr: "ignore" }).stdout,
  ).text();
  return Number(out.split("\t")[0]) || 0;
}

export function createTemplateCache(o: {
  dir: string;
  budgetBytes: number;
  log: ConsolaInstance;
  changed(): void;
  /** Opens the sandbox a build's steps run in (src/sandbox/template-build.ts). */
  openSandbox: OpenBuildSandbox;
  /** Downloads job JOB's artifact NAME to DEST (for tarball templates). */
  fetchArtifact?: FetchArtifact;
}): TemplateCache {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const failedDir = join(o.dir, "failed");
  const users = new Map<string, number>();
  const inflight = new Map<string, Promise<void>>();

  const complete = (hash: string): Complete | null => {
    try {
      const c = JSON.parse(readFileSync(join(o.dir, hash, "complete.json"), "utf8")) as Complete;
      return c.hash === hash && statSync(join(o.dir, hash, "root")).isDirectory() ? c : null;
    } catch {
      return null;
    }
  };

  const list = (): CachedTemplate[] =>
    readdirSync(o.dir)
      .filter((h) => /^[0-9a-f]{64}$/.test(h))
      .map((h) => complete(h))
      .filter((c) => c !== null)
      .map((c) => ({ hash: c.hash, name: c.name, sizeBytes: c.sizeBytes }));

  const evict = (): string[] => {
    const all = list().map((c) => ({ ...c, used: statSync(join(o.dir, c.hash)).mtimeMs }));
    let total = all.reduce((n, c) => n + c.sizeBytes, 0);
    const removed: string[] = [];
    for (const c of all.sort((a, b) => a.used - b.used)) {
      if (total <= o.budgetBytes) break;
      if ((users.get(c.hash) ?? 0) > 0 || inflight.has(c.hash)) continue;
      rmSync(join(o.dir, c.hash), { recursive: true, force: true });
      total -= c.sizeBytes;
      removed.push(c.hash);
      o.log.info(`evicted template ${c.name} (${c.hash.slice(0, 12)}) from the cache`);
    }
    if (removed.length) o.changed();
    return removed;
  };

  const hold = (hash: string): Acquired => {
    users.set(hash, (users.get(hash) ?? 0) + 1);
    const now = new Date();
    utimesSync(join(o.dir, hash), now, now);
    let released = false;
    return {
      root: join(o.dir, hash, "root"),
      release() {
        if (released) return;
        released = true;
        users.set(hash, (users.get(hash) ?? 1) - 1);
      },
    };
  };

  const build = async (spec: TemplateSpec, sink: Sink) => {
    const work = join(o.dir, `${spec.hash}.building`);
    rmSync(work, { recursive: true, force: true });
    mkdirSync(work, { mode: 0o755 });
    const logFile = Bun.file(join(work, "build.log")).writer();
    const both: Sink = (c) => {
      logFile.write(c);
      sink(c);
    };
    const base = spec.base ? await acquire(spec.base, both) : null;
    const started = Date.now();
    o.log.info(`building template ${spec.name} (${spec.hash.slice(0, 12)})`);
    both(`--- kiln: building template ${spec.name} (${spec.hash.slice(0, 12)}) ---\n`);
    try {
      const sb = await o.openSandbox(spec.name, spec.hash);
      try {
        await buildTree(spec, join(work, "root"), base?.root ?? null, both, sb, o.fetchArtifact);
      } finally {
        await sb.close();
      }
    } catch (err) {
      const e = coerceError(err);
      await logFile.end();
      const tail = readFileSync(join(work, "build.log"), "utf8").trimEnd().split("\n").slice(-15).join("\n");
      const kept = keepFailedLog(spec, work);
      rmSync(work, { recursive: true, force: true });
      throw new AppError(
        "TEMPLATE_BUILD_FAILED",
        `building template ${spec.name} failed: ${e.message}\n${tail}\nthe whole build log is kept at ${kept}`,
        { cause: e },
      );
    } finally {
      base?.release();
    }
    await logFile.end();
    const sizeBytes = await treeSize(join(work, "root"));
    const c: Complete = { hash: spec.hash, name: spec.name, sizeBytes, builtAt: new Date().toISOString() };
    writeFileSync(join(work, "complete.json"), JSON.stringify(c));
    rmSync(join(o.dir, spec.hash), { recursive: true, force: true });
    renameSync(work, join(o.dir, spec.hash));
    both(`--- kiln: template ${spec.name} built in ${((Date.now() - started) / 1000).toFixed(1)}s ---\n`);
    o.log.info(`template ${spec.name} built (${(sizeBytes / 1048576).toFixed(0)} MiB)`);
  };

  /** Moves a failed build's log (plus debootstrap's, which lives in the tree) to failed/; returns where. */
  const keepFailedLog = (spec: TemplateSpec, work: string): string => {
    mkdirSync(failedDir, { recursive: true, mode: 0o700 });
    const kept = join(failedDir, `${spec.name.replace(/[^a-z0-9._-]/g, "-")}-${spec.hash.slice(0, 12)}.log`);
    const log = join(work, "build.log");
    const inner = readInTree(join(work, "root"), DEBOOTSTRAP_LOG);
    if (inner !== null)
      appendFileSync(log, `\n--- kiln: /${DEBOOTSTRAP_LOG} of the failed tree ---\n${inner}`);
    renameSync(log, kept);
    const old = readdirSync(failedDir)
      .map((f) => ({ f, t: statSync(join(failedDir, f)).mtimeMs }))
      .sort((a, b) => b.t - a.t)
      .slice(KEEP_FAILED_LOGS);
    for (const { f } of old) rmSync(join(failedDir, f), { force: true });
    return kept;
  };

  const acquire = async (spec: TemplateSpec, sink: Sink = () => {}): Promise<Acquired> => {
    if (!/^[0-9a-f]{64}$/.test(spec.hash))
      throw new AppError("BAD_TEMPLATE", `bad template hash for ${spec.name}`);
    if (complete(spec.hash)) return hold(spec.hash);
    let flight = inflight.get(spec.hash);
    if (!flight) {
      flight = build(spec, sink).finally(() => inflight.delete(spec.hash));
      inflight.set(spec.hash, flight);
      flight.then(
        () => {
          o.changed();
          evict();
        },
        () => {},
      );
    } else {
      sink(`--- kiln: waiting for template ${spec.name}, which another job is building ---\n`);
    }
    await flight;
    if (!complete(spec.hash))
      throw new AppError("TEMPLATE_BUILD_FAILED", `template ${spec.name} vanished after its build`);
    return hold(spec.hash);
  };

  return {
    acquire,
    list,
    evict,
    sweep() {
      const removed: string[] = [];
      for (const e of readdirSync(o.dir)) {
        if (e === "failed" || (/^[0-9a-f]{64}$/.test(e) && complete(e))) continue;
        rmSync(join(o.dir, e), { recursive: true, force: true });
        removed.push(e);
      }
      return removed;
    },
  };
}

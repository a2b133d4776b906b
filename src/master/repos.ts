import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { copyFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { AppError, coerceError } from "../lib/errors.ts";
import { keyedLock } from "../lib/keyed-lock.ts";
import type {
  PackageFormat,
  PackageInfo,
  PublishedPackage,
  RepoFormat,
  RepoSettings,
} from "../repo/format.ts";
import { createFormats } from "../repo/formats.ts";
import { type KeyRing, openKeyRing } from "../repo/signer.ts";
import { kindOfFile } from "../storage/kind.ts";
import { listArtifacts } from "../store/artifacts.ts";
import { commitPublish, getRepo, listRepoPackages, listRepos, type PackageKey } from "../store/repos.ts";
import type { JobRow, RepoPackageRow, RepoRow } from "../store/schema.ts";
import { blobKey } from "./artifacts.ts";
import type { MasterContext } from "./context.ts";
import { planPublish } from "./repo-plan.ts";
import {
  beginSnapshot,
  currentGeneration,
  packageFile,
  prepareRepoDirs,
  removeRepoFiles,
  repoDir,
  snapshotDir,
  snapshotGenerations,
  sweepSnapshots,
  sweepUncommitted,
  switchCurrent,
} from "./repo-snapshots.ts";

/*
 * The repository builder. Packages reach a repository from a succeeded job's artifacts (`submit --repo`,
 * `repo publish`): each file is read for its own metadata (never its name), checked against the
 * repository (format, architecture, newer than what it holds), and the whole set is published at once or
 * not at all. Publishes into one repository run one at a time (a queue per name); different
 * repositories publish in parallel. See repo-snapshots.ts for how a publish appears atomically.
 */

/** One file to publish and what to call it in messages (the artifact's name). */
export interface PublishFile {
  path: string;
  label: string;
  /** The sha256 the file must have (the artifact's), checked as it is read. */
  sha256?: string;
}

/** What a publish did. */
export interface PublishResult {
  repo: string;
  generation: number;
  /** Packages added (or replaced, with force). */
  added: PublishedPackage[];
  /** Packages that were there already, the same file: publishing them again changes nothing. */
  unchanged: PublishedPackage[];
  /** Older versions dropped to keep the newest `keep`. */
  removed: PackageKey[];
}

/** Who publishes, for the log and the audit record. */
export interface PublishBy {
  by: string;
  jobId: number | null;
  force: boolean;
}

/** The repository builder of a master. */
export interface RepoService {
  readonly formats: Record<PackageFormat, RepoFormat>;
  readonly keys: KeyRing;
  /**
   * Publishes `files` into repository `name`, all of them or none; the files are moved into the
   * repository (a refused one is left where it was).
   */
  publish(name: string, files: PublishFile[], who: PublishBy): Promise<PublishResult>;
  /**
   * Publishes the deb and rpm artifacts of `job` (the job's own repository unless `name` is given). A job
   * with no package artifacts publishes nothing (and succeeds: a build may skip when it is not newer).
   */
  publishJob(job: JobRow, who: PublishBy, name?: string, only?: string[]): Promise<PublishResult | null>;
  /** Makes the empty snapshot of a new repository, so clients can read it before its first publish. */
  create(name: string): Promise<void>;
  /** Writes the repository's metadata again (a new snapshot, same packages): after a key change. */
  refresh(name: string): Promise<void>;
  /** Removes the repository's files, after its row is gone; waits for a publish under way. */
  removeFiles(name: string): Promise<void>;
  /** At start-up: each repository's `current` points at its committed generation, crash leftovers go. */
  recover(): Promise<void>;
  /** Removes snapshots replaced longer ago than the grace period. */
  sweepOnce(): Promise<void>;
  /** Waits for publishes under way and stops the signing agent. */
  close(): Promise<void>;
}

/** How long a replaced snapshot stays readable by clients that fetched the index before the switch. */
export const DEFAULT_SNAPSHOT_GRACE = 10 * 60_000;

/** The metadata settings of a repository row. */
export const settingsOf = (r: RepoRow): RepoSettings => ({
  name: r.name,
  format: r.format as PackageFormat,
  dist: r.dist ?? undefined,
  component: r.component ?? undefined,
  archs: r.archs,
});

/** A stored package row as the format's metadata writer takes it. */
const published = (r: RepoPackageRow, format: PackageFormat): PublishedPackage => ({
  format,
  name: r.name,
  version: r.version,
  arch: r.arch,
  source: r.source ?? undefined,
  size: r.size,
  sha256: r.sha256,
  meta: r.meta,
  path: r.path,
});

/*
 * AUDIT HOOK: every publish that changed a repository passes here once, after it is committed and
 * served. An audit log records it here (who, which job, what was added and dropped, forced or not); until
 * then the master's log line is the record.
 */
function recordPublish(ctx: RepoDeps, result: PublishResult, who: PublishBy) {
  const what = result.added.map((p) => `${p.name} ${p.version} (${p.arch})`).join(", ");
  const dropped = result.removed.length
    ? `; dropped ${result.removed.map((k) => `${k.name} ${k.version} (${k.arch})`).join(", ")}`
    : "";
  ctx.log.info(
    `repository ${result.repo}: published ${what}${dropped} as generation ${result.generation} by ${who.by}${who.jobId ? ` (job ${who.jobId})` : ""}${who.force ? ", forced" : ""}`,
    who.jobId ? { jobId: who.jobId } : {},
  );
}

// Moves a file into the repository's store; a copy where a rename cannot cross file systems.
async function moveFile(from: string, to: string) {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EXDEV") throw err;
    await copyFile(from, to);
    await rm(from, { force: true });
  }
}

/** What the repository builder needs of the master. */
export type RepoDeps = Pick<MasterContext, "dataDir" | "store" | "artifacts" | "log">;

/** The repository builder for `ctx`; `graceMs` keeps replaced snapshots readable that long. */
export function createRepoService(ctx: RepoDeps, graceMs = DEFAULT_SNAPSHOT_GRACE): RepoService {
  const { dataDir } = ctx;
  const formats = createFormats({ rpmCacheDir: join(dataDir, "repo-cache", "rpm") });
  const keys = openKeyRing(join(dataDir, "repo-key"));
  const incoming = join(dataDir, "repos", ".incoming");
  // One queue per repository name: its publishes, refreshes and removal never overlap.
  const serialized = keyedLock();

  const load = async (name: string) => {
    const repo = await getRepo(ctx.store.db, name);
    if (!repo)
      throw new AppError("REPO_NOT_FOUND", `no repository ${name}: list them with \`kiln repo ls\``, {
        status: 404,
      });
    return repo;
  };

  /**
   * Makes snapshot `generation + 1` holding `rows` with fresh metadata, commits it with `change`, and
   * switches `current` to it. On any failure before the commit nothing a client sees has changed.
   */
  const writeGeneration = async (
    repo: RepoRow,
    rows: RepoPackageRow[],
    change: { add: RepoPackageRow[]; remove: PackageKey[] },
  ): Promise<number> => {
    const next = repo.generation + 1;
    prepareRepoDirs(dataDir, repo.name);
    const snap = await beginSnapshot(dataDir, repo.name, next);
    try {
      for (const r of rows) await snap.place(r.sha256, r.path);
      await buildMetadata(repo, rows, snap.dir);
      await snap.complete();
    } catch (err) {
      await snap.abandon();
      throw err;
    }
    if (!(await commitPublish(ctx.store, repo.name, repo.generation, change))) {
      await rm(snapshotDir(dataDir, repo.name, next), { recursive: true, force: true });
      throw new AppError(
        "REPO_CHANGED",
        `repository ${repo.name} changed (removed, or published by another master) during this publish; publish again`,
        { status: 409 },
      );
    }
    await switchCurrent(dataDir, repo.name, next);
    return next;
  };

  const buildMetadata = async (repo: RepoRow, rows: RepoPackageRow[], dir: string) => {
    const format = formats[repo.format as PackageFormat];
    const signer = keys.signer(repo.keyFingerprint);
    await format.writeMetadata(
      dir,
      settingsOf(repo),
      rows.map((r) => published(r, format.format)),
      signer,
    );
    await writeFile(join(dir, "key.asc"), await signer.publicKey(), { mode: 0o644 });
  };

  // Reads one file's identity and checks it fits the repository; throws the refusal a user reads.
  const check = async (repo: RepoRow, file: PublishFile): Promise<PackageInfo> => {
    const kind = await kindOfFile(file.path);
    if (kind !== repo.format) {
      throw new AppError(
        "REPO_WRONG_FORMAT",
        `${file.label} is ${kind === "deb" ? "a Debian package" : kind === "rpm" ? "an RPM package" : `not a package (${kind})`}; repository ${repo.name} holds ${repo.format} packages`,
        { status: 422 },
      );
    }
    const info = await formats[repo.format as PackageFormat].read(file.path);
    if (file.sha256 && info.sha256 !== file.sha256) {
      throw new AppError(
        "CHECKSUM_MISMATCH",
        `${file.label}: the stored content's sha256 is ${info.sha256}, not the artifact's ${file.sha256} (damaged on the master's disk?)`,
      );
    }
    if (!repo.archs.includes(info.arch)) {
      throw new AppError(
        "REPO_WRONG_ARCH",
        `${file.label} is ${info.name} ${info.version} for ${info.arch}; repository ${repo.name} takes ${repo.archs.join(", ")} (kiln repo add --arch)`,
        { status: 422 },
      );
    }
    return info;
  };

  const publishNow = async (name: string, files: PublishFile[], who: PublishBy): Promise<PublishResult> => {
    const repo = await load(name);
    const format = formats[repo.format as PackageFormat];
    const settings = settingsOf(repo);
    const infos: { info: PackageInfo; file: PublishFile }[] = [];
    for (const file of files) infos.push({ info: await check(repo, file), file });

    const rows = await listRepoPackages(ctx.store.db, repo.name);
    const plan = planPublish(
      repo,
      settings,
      format,
      rows,
      infos.map(({ info, file }) => ({ info, label: file.label })),
      who,
    );
    const { added, kept, replaced } = plan;
    const unchanged = plan.unchanged.map((r) => published(r, format.format));
    if (added.length === 0)
      return { repo: repo.name, generation: repo.generation, added: [], unchanged, removed: [] };
    const removed = plan.dropped;

    // The stored copies, named by content: the same file published twice is stored once.
    prepareRepoDirs(dataDir, repo.name);
    const stored: string[] = [];
    for (const { info, file } of infos) {
      const target = packageFile(dataDir, repo.name, info.sha256);
      if (!added.some((r) => r.sha256 === info.sha256) || existsSync(target)) continue;
      await moveFile(file.path, target);
      stored.push(target);
    }
    let generation: number;
    try {
      generation = await writeGeneration(repo, kept, {
        add: added.filter((r) => kept.includes(r)),
        remove: [...replaced, ...removed.filter((r) => rows.includes(r))],
      });
    } catch (err) {
      for (const f of stored) await rm(f, { force: true });
      throw err;
    }
    // Stored files no package names any more; the snapshots that list them keep their own links.
    const names = new Set(kept.map((r) => r.sha256));
    for (const r of [...replaced, ...removed])
      if (!names.has(r.sha256)) await rm(packageFile(dataDir, repo.name, r.sha256), { force: true });
    const result: PublishResult = {
      repo: repo.name,
      generation,
      added: added.filter((r) => kept.includes(r)).map((r) => published(r, format.format)),
      unchanged,
      removed: removed.map(({ name, arch, version }) => ({ name, arch, version })),
    };
    recordPublish(ctx, result, who);
    return result;
  };

  // Copies an artifact's bytes out of the blob store into a file the formats can read.
  const fetchArtifact = async (sha256: string, label: string): Promise<string> => {
    mkdirSync(incoming, { recursive: true, mode: 0o700 });
    const path = join(incoming, `${randomBytes(8).toString("hex")}.pkg`);
    const body = await ctx.artifacts.blobs.get(blobKey(sha256));
    if (!body) {
      throw new AppError(
        "ARTIFACT_MISSING",
        `the content of ${label} (sha256 ${sha256}) is missing from the ${ctx.artifacts.blobs.kind} store`,
        { status: 404 },
      );
    }
    await Bun.write(path, new Response(body));
    return path;
  };

  // A refusal is the publisher's to read; a failure of the master's own (gpg, createrepo_c, the disk) is
  // the operator's, said once here with what failed.
  const said = new WeakSet<Error>();
  const logged = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      const e = coerceError(err);
      if ((!(e instanceof AppError) || e.status >= 500) && !said.has(e)) {
        said.add(e);
        ctx.log.error(`${what}: ${e.message}`, { code: e instanceof AppError ? e.code : "INTERNAL" });
      }
      throw err;
    }
  };

  const publishJobNow = async (
    job: JobRow,
    who: PublishBy,
    name: string | undefined,
    only: string[] | undefined,
  ): Promise<PublishResult | null> => {
    if (!name) return null;
    const artifacts = (await listArtifacts(ctx.store.db, job.id)).filter(
      (a) => (a.kind === "deb" || a.kind === "rpm") && (!only || only.includes(a.name)),
    );
    if (only) {
      const missing = only.filter((n) => !artifacts.some((a) => a.name === n));
      if (missing.length)
        throw new AppError(
          "REPO_NO_PACKAGES",
          `job ${job.id} has no package artifact ${missing.join(", ")}: see \`kiln artifacts ${job.id}\``,
          { status: 422 },
        );
    }
    if (artifacts.length === 0) return null;
    const files: PublishFile[] = [];
    try {
      for (const a of artifacts)
        files.push({ path: await fetchArtifact(a.sha256, a.name), label: a.name, sha256: a.sha256 });
      return await service.publish(name, files, who);
    } finally {
      for (const f of files) await rm(f.path, { force: true });
    }
  };

  const service: RepoService = {
    formats,
    keys,
    publish: (name, files, who) =>
      logged(`repository ${name}: publishing failed`, () =>
        serialized(name, () => publishNow(name, files, who)),
      ),
    publishJob: (job, who, name = job.repo ?? undefined, only) =>
      logged(`job ${job.id}: publishing its packages into repository ${name} failed`, () =>
        publishJobNow(job, who, name, only),
      ),
    create: (name) =>
      logged(`repository ${name}: writing its first snapshot failed`, () =>
        serialized(name, async () => {
          const repo = await load(name);
          removeRepoFiles(dataDir, name);
          rmSync(join(dataDir, "repo-cache", "rpm", name), { recursive: true, force: true });
          prepareRepoDirs(dataDir, name);
          const snap = await beginSnapshot(dataDir, name, repo.generation);
          await buildMetadata(repo, [], snap.dir);
          await snap.complete();
          await switchCurrent(dataDir, name, repo.generation);
        }),
      ),
    refresh: (name) =>
      logged(`repository ${name}: writing its metadata again failed`, () =>
        serialized(name, async () => {
          const repo = await load(name);
          const rows = await listRepoPackages(ctx.store.db, name);
          await writeGeneration(repo, rows, { add: [], remove: [] });
        }),
      ),
    removeFiles: (name) =>
      serialized(name, async () => {
        removeRepoFiles(dataDir, name);
        rmSync(join(dataDir, "repo-cache", "rpm", name), { recursive: true, force: true });
      }),
    async recover() {
      rmSync(incoming, { recursive: true, force: true });
      const rows = await listRepos(ctx.store.db);
      const known = new Set(rows.map((r) => r.name));
      const root = join(dataDir, "repos");
      // A repository removed while its files were being removed: no row, so nothing serves them.
      if (existsSync(root))
        for (const entry of readdirSync(root))
          if (entry.startsWith(".removed-") || (!entry.startsWith(".") && !known.has(entry)))
            rmSync(join(root, entry), { recursive: true, force: true });
      for (const repo of rows) {
        await serialized(repo.name, async () => {
          sweepUncommitted(dataDir, repo.name, repo.generation);
          if (snapshotGenerations(dataDir, repo.name).includes(repo.generation)) {
            if (currentGeneration(dataDir, repo.name) !== repo.generation)
              await switchCurrent(dataDir, repo.name, repo.generation);
            return;
          }
          // The committed snapshot is gone (a data dir restored in part): make it again from the store.
          ctx.log.warn(
            `repository ${repo.name}: snapshot ${repo.generation} is missing; writing it again from the stored packages`,
          );
          const packages = await listRepoPackages(ctx.store.db, repo.name);
          prepareRepoDirs(dataDir, repo.name);
          const snap = await beginSnapshot(dataDir, repo.name, repo.generation);
          try {
            for (const r of packages) await snap.place(r.sha256, r.path);
            await buildMetadata(repo, packages, snap.dir);
            await snap.complete();
            await switchCurrent(dataDir, repo.name, repo.generation);
          } catch (err) {
            await snap.abandon();
            ctx.log.error(
              `repository ${repo.name}: cannot write snapshot ${repo.generation} again (${coerceError(err).message}); restore ${repoDir(dataDir, repo.name)} from a backup, or publish again`,
            );
          }
        });
      }
    },
    async sweepOnce() {
      for (const repo of await listRepos(ctx.store.db))
        await serialized(repo.name, async () => {
          sweepSnapshots(dataDir, repo.name, graceMs);
        });
    },
    async close() {
      await serialized.idle();
      await keys.close();
    },
  };
  return service;
}

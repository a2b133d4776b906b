import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
} from "node:fs";
import { link, mkdir, rename, rm, symlink } from "node:fs/promises";
import { join } from "node:path";

/*
 * The files of a package repository, DATA/repos/NAME:
 *
 *   packages/SHA256          every package file it holds, once (hardlinked into snapshots)
 *   snapshots/N/             a complete, served tree: the packages at their pool paths and the metadata
 *   snapshots/.building-N/   a snapshot being made; never served, removed at start-up if left by a crash
 *   current -> snapshots/N   what /repos/NAME/ serves, switched by rename(2)
 *
 * A publish makes snapshot N+1 from scratch (hardlinks, then the metadata), renames it into place, commits
 * the repository's generation N+1 in the store, and only then points `current` at it with one rename, so a
 * request sees the old tree or the new one, never a mix. A client may read InRelease from one snapshot and
 * the indexes it names a moment later, after the switch: those are found in the snapshot it came from,
 * which stays for a grace period (see resolveServed), as do package files dropped by `keep`.
 */

/** Where repository `name`'s files live. */
export const repoDir = (dataDir: string, name: string) => join(dataDir, "repos", name);
/** Where the snapshot of generation `n` lives. */
export const snapshotDir = (dataDir: string, name: string, n: number) =>
  join(repoDir(dataDir, name), "snapshots", String(n));
/** Where the stored file of a package with this sha256 lives. */
export const packageFile = (dataDir: string, name: string, sha256: string) =>
  join(repoDir(dataDir, name), "packages", sha256);

/** The generations of the complete snapshots of a repository, oldest first. */
export function snapshotGenerations(dataDir: string, name: string): number[] {
  const dir = join(repoDir(dataDir, name), "snapshots");
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((n) => /^\d{1,15}$/.test(n))
    .map(Number)
    .sort((a, b) => a - b);
}

/** The generation `current` points at, or null when there is no such link yet. */
export function currentGeneration(dataDir: string, name: string): number | null {
  try {
    const target = readlinkSync(join(repoDir(dataDir, name), "current"));
    const m = /^snapshots\/(\d{1,15})$/.exec(target);
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/**
 * Starts snapshot `n`: an empty directory `.building-n` (a leftover of a crashed build is removed first).
 * Call `place` for each package, write the metadata into `dir`, then `complete`.
 */
export async function beginSnapshot(dataDir: string, name: string, n: number) {
  const snapshots = join(repoDir(dataDir, name), "snapshots");
  const dir = join(snapshots, `.building-${n}`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const made = new Set<string>();
  return {
    dir,
    /** Hardlinks the stored package `sha256` at `path` below the snapshot (a path Kiln made, checked). */
    async place(sha256: string, path: string) {
      if (path.split("/").some((p) => p === "" || p === "." || p === ".."))
        throw new Error(`refusing pool path ${JSON.stringify(path)}`);
      const parent = join(dir, path, "..");
      if (!made.has(parent)) {
        await mkdir(parent, { recursive: true, mode: 0o755 });
        made.add(parent);
      }
      await link(packageFile(dataDir, name, sha256), join(dir, path));
    },
    /** Renames the finished snapshot into place as generation `n`. */
    async complete() {
      const final = join(snapshots, String(n));
      await rm(final, { recursive: true, force: true });
      await rename(dir, final);
    },
    /** Removes the unfinished snapshot. */
    abandon: () => rm(dir, { recursive: true, force: true }),
  };
}

/** Points `current` at snapshot `n` with one rename(2): readers see the old tree or the new one. */
export async function switchCurrent(dataDir: string, name: string, n: number) {
  const dir = repoDir(dataDir, name);
  const tmp = join(dir, `.current-${n}-${process.pid}`);
  await rm(tmp, { force: true });
  await symlink(`snapshots/${n}`, tmp);
  await rename(tmp, join(dir, "current"));
}

/** Removes the unfinished builds and the snapshots newer than `generation` (a publish that never committed). */
export function sweepUncommitted(dataDir: string, name: string, generation: number) {
  const snapshots = join(repoDir(dataDir, name), "snapshots");
  if (!existsSync(snapshots)) return;
  for (const entry of readdirSync(snapshots)) {
    const n = /^\d{1,15}$/.test(entry) ? Number(entry) : null;
    if (entry.startsWith(".building-") || (n !== null && n > generation))
      rmSync(join(snapshots, entry), { recursive: true, force: true });
  }
  for (const entry of readdirSync(repoDir(dataDir, name)))
    if (entry.startsWith(".current-")) rmSync(join(repoDir(dataDir, name), entry), { force: true });
}

/**
 * Removes the snapshots older than the current one that were replaced more than `graceMs` ago (a
 * snapshot's replacement time is when the next one was made). Returns how many went.
 */
export function sweepSnapshots(dataDir: string, name: string, graceMs: number, now = Date.now()): number {
  const current = currentGeneration(dataDir, name);
  if (current === null) return 0;
  const gens = snapshotGenerations(dataDir, name);
  let removed = 0;
  for (let i = 0; i < gens.length - 1; i++) {
    const gen = gens[i] as number;
    if (gen >= current) break;
    const next = snapshotDir(dataDir, name, gens[i + 1] as number);
    if (now - statSync(next).mtimeMs < graceMs) break;
    rmSync(snapshotDir(dataDir, name, gen), { recursive: true, force: true });
    removed++;
  }
  return removed;
}

/** A request path's parts, or null when one of them could climb or hide: empty, ".", "..", a NUL, a backslash. */
export function servedParts(path: string): string[] | null {
  const parts = path.split("/");
  if (parts.length === 0 || parts.length > 32) return null;
  for (const p of parts)
    if (p === "" || p === "." || p === ".." || /[\0\\]/.test(p) || p.length > 255) return null;
  return parts;
}

/**
 * The file a request for `parts` is served from: the current snapshot's, else (for content that only
 * older snapshots still hold: by-hash indexes and package files a newer snapshot dropped) the newest
 * older snapshot that has it. Only regular files are served; every part is a plain name (servedParts).
 */
export function resolveServed(dataDir: string, name: string, parts: string[]): string | null {
  const current = currentGeneration(dataDir, name);
  if (current === null) return null;
  const gens = snapshotGenerations(dataDir, name)
    .filter((g) => g <= current)
    .reverse();
  for (const g of gens) {
    const file = join(snapshotDir(dataDir, name, g), ...parts);
    try {
      if (lstatSync(file).isFile()) return file;
    } catch {
      // Not in this snapshot: an older one may have it.
    }
  }
  return null;
}

/** Removes everything of repository `name` on disk. */
export function removeRepoFiles(dataDir: string, name: string) {
  const dir = repoDir(dataDir, name);
  if (!existsSync(dir)) return;
  // Renamed away first, so a reader never sees a half-removed tree under the name.
  const gone = join(dataDir, "repos", `.removed-${name}-${process.pid}-${Date.now()}`);
  renameSync(dir, gone);
  rmSync(gone, { recursive: true, force: true });
}

/** Makes sure the directories a publish writes into exist. */
export function prepareRepoDirs(dataDir: string, name: string) {
  mkdirSync(join(repoDir(dataDir, name), "packages"), { recursive: true, mode: 0o755 });
  mkdirSync(join(repoDir(dataDir, name), "snapshots"), { recursive: true, mode: 0o755 });
}

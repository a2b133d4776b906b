import { AppError } from "../lib/errors.ts";
import type { PackageInfo, RepoFormat, RepoSettings } from "../repo/format.ts";
import type { RepoPackageRow, RepoRow } from "../store/schema.ts";

/*
 * What a publish changes, decided from the repository's stored packages and the new packages' own
 * metadata, before anything is written: which are new, which are there already (the same file), which
 * an equal version replaces (with force), and which older versions `keep` drops. A package that is not
 * newer than the newest of its name and architecture is refused unless forced.
 */

/** A package to publish and the name to call it by in messages (its artifact's). */
export interface Incoming {
  info: PackageInfo;
  label: string;
}

/** A publish's changes; `kept` is the repository's whole package set after it. */
export interface PublishPlan {
  added: RepoPackageRow[];
  unchanged: RepoPackageRow[];
  /** Stored rows an equal version (with other content) replaces: forced only. */
  replaced: RepoPackageRow[];
  /** Rows `keep` drops, stored ones and new ones alike (a forced old version may go at once). */
  dropped: RepoPackageRow[];
  kept: RepoPackageRow[];
}

/** Plans publishing `incoming` into `repo`, which holds `rows`; throws REPO_NOT_NEWER. */
export function planPublish(
  repo: RepoRow,
  settings: RepoSettings,
  format: RepoFormat,
  rows: RepoPackageRow[],
  incoming: Incoming[],
  who: { by: string; jobId: number | null; force: boolean },
  now = Date.now(),
): PublishPlan {
  const added: RepoPackageRow[] = [];
  const unchanged: RepoPackageRow[] = [];
  const replaced: RepoPackageRow[] = [];
  let set = [...rows];
  for (const { info, label } of incoming) {
    const same = set.filter((r) => r.name === info.name && r.arch === info.arch);
    const existing = same.find((r) => format.compare(r.version, info.version) === 0);
    if (existing && existing.sha256 === info.sha256) {
      unchanged.push(existing);
      continue;
    }
    const newest = same.reduce<RepoPackageRow | null>(
      (a, r) => (!a || format.compare(r.version, a.version) > 0 ? r : a),
      null,
    );
    const what = `${label}: ${info.name} ${info.version} (${info.arch})`;
    if (!who.force && newest && format.compare(info.version, newest.version) <= 0) {
      throw new AppError(
        "REPO_NOT_NEWER",
        existing
          ? `${what} is already published with different content in repository ${repo.name}: raise the version, or publish with --force to replace it`
          : `${what} is not newer than ${newest.version} in repository ${repo.name}: raise the version, or publish with --force`,
        { status: 409 },
      );
    }
    if (existing) {
      replaced.push(existing);
      set = set.filter((r) => r !== existing);
    }
    const row: RepoPackageRow = {
      repo: repo.name,
      name: info.name,
      arch: info.arch,
      version: info.version,
      source: info.source ?? null,
      size: info.size,
      sha256: info.sha256,
      path: format.poolPath(info, settings),
      meta: info.meta,
      jobId: who.jobId,
      publishedAt: now,
      publishedBy: who.by,
    };
    // Two packages at one path would overwrite each other in the pool.
    if (set.some((r) => r.path === row.path)) {
      throw new AppError(
        "REPO_NOT_NEWER",
        `${label}: ${row.path} is in repository ${repo.name} already, as another package`,
        { status: 409 },
      );
    }
    set.push(row);
    added.push(row);
  }
  // The newest `keep` versions of each name and architecture stay.
  const groups = new Map<string, RepoPackageRow[]>();
  for (const r of set) {
    const key = `${r.name}\0${r.arch}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  const dropped = new Set<RepoPackageRow>();
  for (const group of groups.values()) {
    group.sort((a, b) => format.compare(b.version, a.version));
    for (const r of group.slice(repo.keep)) dropped.add(r);
  }
  return { added, unchanged, replaced, dropped: [...dropped], kept: set.filter((r) => !dropped.has(r)) };
}

import { and, asc, eq, isNull, or } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type RepoPackageRow, type RepoRow, repoPackages, repos } from "./schema.ts";

/*
 * Package repositories and their packages. A publish changes a repository's packages and moves its
 * generation on by one in one transaction, guarded on the generation it started from: the master
 * serializes publishes per repository, and the guard makes a second master (or a bug) fail loudly
 * rather than interleave two package sets.
 */

/** What `repo add` stores: every column but those the store sets itself. */
export type NewRepo = Omit<typeof repos.$inferInsert, "generation" | "publishedAt">;

/** Records repository `r`; resolves false (and changes nothing) when the name is taken. */
export function insertRepo(store: Store, r: NewRepo): Promise<boolean> {
  return store.write(async (tx) => {
    const rows = await tx.insert(repos).values(r).onConflictDoNothing().returning({ name: repos.name });
    return rows.length === 1;
  });
}

/** The repository named `name`, if there is one. */
export async function getRepo(db: Db, name: string): Promise<RepoRow | undefined> {
  return (await db.select().from(repos).where(eq(repos.name, name)))[0];
}

/**
 * Repositories by name. With `project`, only those a caller limited to it may see: its own, those of no
 * project, and public ones.
 */
export function listRepos(db: Db, project?: string | null) {
  const q = db.select().from(repos);
  const scoped = project
    ? q.where(or(eq(repos.project, project), isNull(repos.project), eq(repos.public, true)))
    : q;
  return scoped.orderBy(asc(repos.name));
}

/** Removes repository `name` and its package rows; resolves false when there was none. */
export function deleteRepo(store: Store, name: string): Promise<boolean> {
  return store.write(async (tx) => {
    await tx.delete(repoPackages).where(eq(repoPackages.repo, name));
    const rows = await tx.delete(repos).where(eq(repos.name, name)).returning({ name: repos.name });
    return rows.length === 1;
  });
}

/** Sets the repository's signing key (null: the master's own). */
export function setRepoKey(store: Store, name: string, fingerprint: string | null): Promise<void> {
  return store.write(async (tx) => {
    await tx.update(repos).set({ keyFingerprint: fingerprint }).where(eq(repos.name, name));
  });
}

/** Every package of repository `repo`, by name, arch and version as stored. */
export function listRepoPackages(db: Db, repo: string): Promise<RepoPackageRow[]> {
  return db
    .select()
    .from(repoPackages)
    .where(eq(repoPackages.repo, repo))
    .orderBy(asc(repoPackages.name), asc(repoPackages.arch));
}

/** The packages named `name` in repository `repo` (every arch and version). */
export function packagesNamed(db: Db, repo: string, name: string): Promise<RepoPackageRow[]> {
  return db
    .select()
    .from(repoPackages)
    .where(and(eq(repoPackages.repo, repo), eq(repoPackages.name, name)));
}

/** A package row's key within its repository. */
export type PackageKey = Pick<RepoPackageRow, "name" | "arch" | "version">;

/**
 * Moves repository `repo` from generation `from` to `from + 1`: removes `remove`, adds `add`, in one
 * transaction. Resolves false, changing nothing, when the repository is gone or no longer at `from`.
 */
export function commitPublish(
  store: Store,
  repo: string,
  from: number,
  change: { add: RepoPackageRow[]; remove: PackageKey[] },
  now = Date.now(),
): Promise<boolean> {
  return store.write(async (tx) => {
    const moved = await tx
      .update(repos)
      .set({ generation: from + 1, publishedAt: now })
      .where(and(eq(repos.name, repo), eq(repos.generation, from)))
      .returning({ name: repos.name });
    if (moved.length !== 1) return false;
    for (const k of change.remove) {
      await tx
        .delete(repoPackages)
        .where(
          and(
            eq(repoPackages.repo, repo),
            eq(repoPackages.name, k.name),
            eq(repoPackages.arch, k.arch),
            eq(repoPackages.version, k.version),
          ),
        );
    }
    if (change.add.length) await tx.insert(repoPackages).values(change.add);
    return true;
  });
}

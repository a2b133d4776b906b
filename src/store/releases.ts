import { desc, eq } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type ReleaseRow, releases } from "./schema.ts";

/** Records release `r.tag`; resolves false (and changes nothing) when the tag is already taken. */
export function insertRelease(store: Store, r: ReleaseRow): Promise<boolean> {
  return store.write(async (tx) => {
    const rows = await tx.insert(releases).values(r).onConflictDoNothing().returning({ tag: releases.tag });
    return rows.length === 1;
  });
}

/** The release named `tag`, if there is one. */
export async function getRelease(db: Db, tag: string): Promise<ReleaseRow | undefined> {
  return (await db.select().from(releases).where(eq(releases.tag, tag)))[0];
}

/** Releases newest first, at most `limit`, optionally of one project. */
export function listReleases(db: Db, opts: { project?: string | null; limit?: number } = {}) {
  const q = db.select().from(releases);
  const scoped = opts.project ? q.where(eq(releases.project, opts.project)) : q;
  return scoped.orderBy(desc(releases.createdAt)).limit(opts.limit ?? 100);
}

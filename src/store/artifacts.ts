import { and, eq, sql } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type ArtifactBlobRow, type ArtifactRow, artifactBlobs, artifacts } from "./schema.ts";

/*
 * A job's artifacts and the blobs behind them. Every change is one transaction that also says which
 * blobs lost their last reference, so the caller can delete exactly those from the blob store.
 */

/** An artifact row with its blob's kind and store. */
export type ArtifactView = ArtifactRow & Pick<ArtifactBlobRow, "kind" | "store">;

/** Blobs no artifact names after `jobId`'s change: their rows are gone; the bytes are the caller's to delete. */
async function orphans(tx: Db, shas: string[]): Promise<ArtifactBlobRow[]> {
  const gone: ArtifactBlobRow[] = [];
  for (const sha256 of new Set(shas)) {
    const [ref] = await tx
      .select({ n: sql<number>`count(*)` })
      .from(artifacts)
      .where(eq(artifacts.sha256, sha256));
    if (Number(ref?.n ?? 0) > 0) continue;
    gone.push(...(await tx.delete(artifactBlobs).where(eq(artifactBlobs.sha256, sha256)).returning()));
  }
  return gone;
}

/**
 * Records (or replaces) artifact `name` of a job and its blob (kept as it is when already known).
 * Returns the blobs this left without a reference: the content a replaced artifact had.
 */
export function putArtifact(
  store: Store,
  a: Omit<ArtifactRow, "createdAt"> & Pick<ArtifactBlobRow, "kind" | "store">,
  now = Date.now(),
): Promise<ArtifactBlobRow[]> {
  return store.write(async (tx) => {
    await tx
      .insert(artifactBlobs)
      .values({ sha256: a.sha256, size: a.size, kind: a.kind, store: a.store, createdAt: now })
      .onConflictDoNothing();
    const [before] = await tx
      .select({ sha256: artifacts.sha256 })
      .from(artifacts)
      .where(and(eq(artifacts.jobId, a.jobId), eq(artifacts.name, a.name)));
    const row = {
      jobId: a.jobId,
      name: a.name,
      attempt: a.attempt,
      size: a.size,
      sha256: a.sha256,
      mode: a.mode,
    };
    await tx
      .insert(artifacts)
      .values({ ...row, createdAt: now })
      .onConflictDoUpdate({
        target: [artifacts.jobId, artifacts.name],
        set: { attempt: a.attempt, size: a.size, sha256: a.sha256, mode: a.mode, createdAt: now },
      });
    return before && before.sha256 !== a.sha256 ? orphans(tx, [before.sha256]) : [];
  });
}

/** Forgets every artifact of a job; returns the blobs that no other job's artifact names. */
export function deleteJobArtifacts(store: Store, jobId: number): Promise<ArtifactBlobRow[]> {
  return store.write(async (tx) => {
    const gone = await tx.delete(artifacts).where(eq(artifacts.jobId, jobId)).returning();
    return orphans(
      tx,
      gone.map((r) => r.sha256),
    );
  });
}

const viewColumns = {
  jobId: artifacts.jobId,
  name: artifacts.name,
  attempt: artifacts.attempt,
  size: artifacts.size,
  sha256: artifacts.sha256,
  createdAt: artifacts.createdAt,
  mode: artifacts.mode,
  // A row from before blobs were tracked always has one (the migration made them); "other" is a fallback.
  kind: sql<string>`coalesce(${artifactBlobs.kind}, 'other')`,
  store: sql<string>`coalesce(${artifactBlobs.store}, 'fs')`,
};

/** A job's artifacts by name, with their kinds. */
export function listArtifacts(db: Db, jobId: number): Promise<ArtifactView[]> {
  return db
    .select(viewColumns)
    .from(artifacts)
    .leftJoin(artifactBlobs, eq(artifactBlobs.sha256, artifacts.sha256))
    .where(eq(artifacts.jobId, jobId))
    .orderBy(artifacts.name);
}

/** Artifact `name` of a job, with its kind, or undefined. */
export async function getArtifact(db: Db, jobId: number, name: string): Promise<ArtifactView | undefined> {
  return (
    await db
      .select(viewColumns)
      .from(artifacts)
      .leftJoin(artifactBlobs, eq(artifactBlobs.sha256, artifacts.sha256))
      .where(and(eq(artifacts.jobId, jobId), eq(artifacts.name, name)))
  )[0];
}

/** The blob with this content, when the master has it. */
export async function getBlob(db: Db, sha256: string): Promise<ArtifactBlobRow | undefined> {
  return (await db.select().from(artifactBlobs).where(eq(artifactBlobs.sha256, sha256)))[0];
}

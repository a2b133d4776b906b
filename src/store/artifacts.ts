import { and, eq } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type ArtifactRow, artifacts } from "./schema.ts";

/** Records (or replaces) artifact `name` of a job. */
export function putArtifact(store: Store, a: Omit<ArtifactRow, "createdAt">, now = Date.now()) {
  return store.write(async (tx) => {
    await tx
      .insert(artifacts)
      .values({ ...a, createdAt: now })
      .onConflictDoUpdate({
        target: [artifacts.jobId, artifacts.name],
        set: { attempt: a.attempt, size: a.size, sha256: a.sha256, createdAt: now },
      });
  });
}

/** The artifacts kept for job `jobId`, by name. */
export function listArtifacts(db: Db, jobId: number) {
  return db.select().from(artifacts).where(eq(artifacts.jobId, jobId)).orderBy(artifacts.name);
}

/** The artifact `name` of job `jobId`, or undefined. */
export async function getArtifact(db: Db, jobId: number, name: string): Promise<ArtifactRow | undefined> {
  return (
    await db
      .select()
      .from(artifacts)
      .where(and(eq(artifacts.jobId, jobId), eq(artifacts.name, name)))
  )[0];
}

import { eq } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type WorkerRow, workers } from "./schema.ts";

/** Records a worker's registration (or re-registration) and marks it connected. */
export function upsertWorker(
  store: Store,
  w: Pick<WorkerRow, "name" | "arch" | "channels" | "slots" | "version">,
  now = Date.now(),
) {
  return store.write(async (tx) => {
    await tx
      .insert(workers)
      .values({ ...w, connected: true, firstSeen: now, lastSeen: now })
      .onConflictDoUpdate({
        target: workers.name,
        set: {
          arch: w.arch,
          channels: w.channels,
          slots: w.slots,
          version: w.version,
          connected: true,
          lastSeen: now,
        },
      });
  });
}

/** Updates the stored fields `set` of worker `name`; returns the row, or null for an unknown worker. */
export function setWorker(store: Store, name: string, set: Partial<WorkerRow>) {
  return store.write(async (tx) => {
    const [row] = await tx.update(workers).set(set).where(eq(workers.name, name)).returning();
    return row ?? null;
  });
}

/** The stored worker `name`, or undefined. */
export function getWorker(db: Db, name: string) {
  return db.query.workers.findFirst({ where: eq(workers.name, name) });
}

/** Every worker ever registered and not removed, by name. */
export function listWorkers(db: Db) {
  return db.select().from(workers).orderBy(workers.name);
}

/** At master start no worker is connected yet, whatever the store last said. */
export function markAllDisconnected(store: Store) {
  return store.write(async (tx) => {
    await tx.update(workers).set({ connected: false });
  });
}

/** Forgets a worker's registration (its holds, drain state, last seen); true when there was one. */
export async function removeWorker(store: Store, name: string): Promise<boolean> {
  return store.write(async (tx) => {
    const gone = await tx.delete(workers).where(eq(workers.name, name)).returning({ name: workers.name });
    return gone.length > 0;
  });
}

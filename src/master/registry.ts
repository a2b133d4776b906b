import type { ServerWebSocket } from "bun";
import type { MasterMessage, SlotInfo } from "../protocol/wire.ts";

/*
 * The master's in-memory view of connected workers and their slots. It is rebuilt from each worker's
 * hello after a restart; the store keeps only what must survive (registrations, holds, jobs).
 */

/** A slot of a connected worker as the dispatcher sees it: its resources, hold and the job in it. */
export interface LiveSlot {
  name: string;
  resources: string[];
  held: string | null;
  /** `jobId:attempt` of the job occupying it, if any. */
  job: string | null;
  /**
   * Refusals in a row (the worker handed assignments back unstarted) and until when the slot is not
   * offered again: each refusal doubles the pause, so a slot the master misjudges cannot spin.
   */
  refusals?: number;
  refusedUntil?: number;
}

/** A connected worker: what it offers (arch, channels, slots), its drain and hold, and how to reach it. */
export interface LiveWorker {
  name: string;
  arch: string;
  channels: string[];
  slots: Map<string, LiveSlot>;
  draining: boolean;
  holdReason: string | null;
  /** The templates this worker has cached, as it last reported. */
  templates: { hash: string; name: string; sizeBytes: number }[];
  send(msg: MasterMessage): void;
  ws: ServerWebSocket<unknown>;
  /** Said worker.stopping: takes no new jobs on this connection. */
  stopping?: boolean;
  /** The worker's data dir identity (worker.hello), null from a worker that does not send one. */
  instance: string | null;
  /** What the connection was opened with (`token:ID` or `cert:SERIAL`): revoking it closes the connection. */
  credential: string;
}

/** The connected workers by name; `remove` only removes the entry of the socket given, never a newer one. */
export interface Registry {
  workers: Map<string, LiveWorker>;
  add(w: LiveWorker): void;
  remove(name: string, ws: ServerWebSocket<unknown>): boolean;
  setSlots(name: string, slots: SlotInfo[]): void;
  occupy(worker: string, slot: string, job: string | null): void;
}

/** An empty registry; it lives as long as the master process and is rebuilt from hellos after a restart. */
export function createRegistry(): Registry {
  const workers = new Map<string, LiveWorker>();
  return {
    workers,
    add(w) {
      workers.set(w.name, w);
    },
    remove(name, ws) {
      const w = workers.get(name);
      if (!w || w.ws !== ws) return false;
      workers.delete(name);
      return true;
    },
    setSlots(name, slots) {
      const w = workers.get(name);
      if (!w) return;
      for (const s of slots) {
        const live = w.slots.get(s.name);
        if (live) {
          live.held = s.held;
          live.resources = s.resources;
        } else w.slots.set(s.name, { ...s, job: null });
      }
      for (const n of [...w.slots.keys()]) if (!slots.some((s) => s.name === n)) w.slots.delete(n);
    },
    occupy(worker, slot, job) {
      const s = workers.get(worker)?.slots.get(slot);
      if (s) s.job = job;
    },
  };
}

// Pre-made scratch volumes: formatting a loop image (fallocate, mkfs) is the slowest step of starting a
// sandboxed job, so while a slot's job runs the next one's volume is made in the background, and attached
// to its loop device, so the launcher only mounts it. Each volume is made fresh and handed out once: to a
// job, or to a slot keeper, which keeps it for its slot's jobs and empties it after each (slot-keeper.ts).
// Pre-made volumes are ordinary images in the scratch directory, so
// the start-up sweep (sweepScratch) removes them after a crash (their devices clear themselves as the
// worker's hold on them goes with it).
//
// A used volume is given back with release(): it returns once no loop device holds the image any more,
// which is what the slot waits for; deleting the image file, which takes milliseconds of disk work, is
// left to the background (drain() waits for it, and the start-up sweep removes what a crash left).

import { coerceError } from "../lib/errors.ts";
import {
  attachScratch,
  createScratch,
  destroyScratch,
  detachScratch,
  removeScratch,
  type Scratch,
  type ScratchConfig,
  scratchSize,
} from "./scratch.ts";

/** Hands out scratch volumes per slot, making the next one ahead of time where that pays off. */
export interface ScratchPool {
  /**
   * A fresh volume of at least sizeBytes for the slot: the one made ahead if it has the right size (waiting
   * for it if it is still being made), else one made now. No volume is ever returned twice.
   */
  take(slot: string, sizeBytes: number): Promise<Scratch>;
  /** Starts making the slot's next volume of sizeBytes in the background, unless one is already there. */
  prepare(slot: string, sizeBytes: number): void;
  /**
   * Gives a used volume back: resolves once no loop device holds it (rejects when one still does after a
   * while); the image itself is deleted in the background.
   */
  release(s: Scratch): Promise<void>;
  /** Waits for volumes being made and destroys every volume made ahead, and waits for deletions; for a clean stop. */
  drain(): Promise<void>;
}

// Made ahead only up to this size: an idle slot holds its next volume on the data disk, which must not
// tie up a big share of it. Bigger volumes are made when their job starts, as before.
export const PREMADE_MAX_BYTES = 1024 * 1024 * 1024;

interface Premade {
  sizeBytes: number;
  volume: Promise<Scratch | null>;
}

/**
 * A pool over cfg. Only the loop backend makes volumes ahead (tmpfs needs nothing, and an LVM volume
 * group is left as it was). `name` turns a slot and a sequence number into a scratch name; `onError`
 * hears about a background failure, after which the job simply makes its volume itself.
 */
export function createScratchPool(
  cfg: ScratchConfig,
  name: (slot: string, seq: number) => string,
  onError: (message: string, serious?: boolean) => void,
): ScratchPool {
  const ahead = new Map<string, Premade>();
  const removing = new Set<Promise<void>>();
  let seq = 0;
  const make = async (slot: string, sizeBytes: number) => {
    const s = await createScratch(cfg, name(slot, seq++), sizeBytes);
    try {
      return attachScratch(s);
    } catch (err) {
      await destroyScratch(cfg, s).catch(() => {});
      throw err;
    }
  };
  const discard = (p: Premade) =>
    p.volume
      .then((v) => (v ? destroyScratch(cfg, v) : undefined))
      .catch((err) => onError(coerceError(err).message));
  return {
    async take(slot, sizeBytes) {
      const p = ahead.get(slot);
      ahead.delete(slot);
      if (p !== undefined) {
        if (p.sizeBytes === scratchSize(sizeBytes)) {
          const v = await p.volume;
          if (v) return v;
        } else {
          void discard(p);
        }
      }
      return make(slot, sizeBytes);
    },
    prepare(slot, sizeBytes) {
      if (cfg.backend !== "loop" || sizeBytes > PREMADE_MAX_BYTES || ahead.has(slot)) return;
      const volume = make(slot, sizeBytes).catch((err) => {
        // Not fatal: the next job makes its own volume, and reports the error if it fails again.
        onError(`could not make the next scratch volume of ${slot} ahead: ${coerceError(err).message}`);
        return null;
      });
      ahead.set(slot, { sizeBytes: scratchSize(sizeBytes), volume });
    },
    async release(s) {
      await detachScratch(s);
      // A logical volume goes at once: a small volume group may need its room for the next job.
      if (s.backend !== "loop") return removeScratch(cfg, s);
      const removal = removeScratch(cfg, s)
        .catch((err) =>
          onError(
            `could not delete the used scratch image ${s.file} (the next start-up sweep removes it): ${coerceError(err).message}`,
            true,
          ),
        )
        .finally(() => removing.delete(removal));
      removing.add(removal);
    },
    async drain() {
      const all = [...ahead.values()];
      ahead.clear();
      await Promise.all(all.map(discard));
      await Promise.all([...removing]);
    },
  };
}

import type { ConsolaInstance } from "consola";
import { coerceError } from "./errors.ts";

export interface Loop {
  stop(): void;
  /** Resolves when the loop has stopped, rejects if it died. */
  done: Promise<void>;
  /** Runs a pass now instead of waiting for the interval. */
  poke(): void;
}

/**
 * Drives a one-pass function forever: run, sleep `everyMs`, repeat. An error in a pass is logged and the
 * loop goes on; the loop only ends through stop(). Passes never overlap.
 */
export function runLoop(
  opts: { name: string; everyMs: number; log: ConsolaInstance },
  pass: () => Promise<void>,
): Loop {
  let stopped = false;
  let wake: (() => void) | undefined;
  let timer: Timer | undefined;
  const sleep = () =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, opts.everyMs);
    });
  const done = (async () => {
    while (!stopped) {
      try {
        await pass();
      } catch (err) {
        opts.log.error(`${opts.name}: ${coerceError(err).message}`);
      }
      if (stopped) break;
      await sleep();
      clearTimeout(timer);
    }
  })();
  return {
    done,
    stop() {
      stopped = true;
      wake?.();
    },
    poke() {
      wake?.();
    },
  };
}

/** A promise that resolves after `ms`. */
export const delay = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

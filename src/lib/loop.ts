import type { ConsolaInstance } from "consola";
import { coerceError } from "./errors.ts";
import { errorFields } from "./log.ts";

/** A running background duty: stop it, wait for it, or ask for a pass now. */
export interface Loop {
  stop(): void;
  /** Resolves when the loop has stopped, rejects if it died. */
  done: Promise<void>;
  /** Runs a pass now instead of waiting for the interval. */
  poke(): void;
}

/**
 * Drives a one-pass function forever: run, sleep `everyMs`, repeat. An error in a pass is logged and the
 * loop goes on; the loop only ends through stop(). Passes never overlap. With `waitFirst` the first pass
 * comes after one interval (for a duty whose first pass the caller has just done itself).
 */
export function runLoop(
  opts: { name: string; everyMs: number; log: ConsolaInstance; waitFirst?: boolean },
  pass: () => void | Promise<void>,
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
    if (opts.waitFirst) {
      await sleep();
      clearTimeout(timer);
    }
    while (!stopped) {
      try {
        await pass();
      } catch (err) {
        opts.log.error(`${opts.name}: ${coerceError(err).message}`, errorFields(err));
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

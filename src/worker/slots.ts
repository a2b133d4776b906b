import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { Config } from "../config/schema.ts";
import { coerceError } from "../lib/errors.ts";
import type { SlotInfo } from "../protocol/wire.ts";
import type { Slot } from "../runner/contract.ts";

/*
 * A worker's slots and why any of them is not offered. Two kinds of hold: a failed health check (cleared
 * by the next passing check) and a mark-broken hold from a job or an operator, kept on disk so it
 * survives a restart, until an operator releases it.
 */

/** The slots of this worker: `[[worker.slots]]` when given, else `capacity` plain ones named slot-N. */
export function slotsFromConfig(cfg: Config): Slot[] {
  if (cfg.worker.slots.length > 0) return cfg.worker.slots.map((s, index) => ({ ...s, index }));
  return Array.from({ length: cfg.worker.capacity }, (_, index) => ({
    name: `slot-${index}`,
    index,
    resources: [],
    devices: [],
    groups: [],
    memory: null,
    cpus: null,
    pids: null,
    health_check: "",
  }));
}

/** The worker's slots with their holds; every change of what is offered is reported through `changed`. */
export interface SlotBook {
  /** Every slot of the worker, held or not, in config order. */
  slots: Slot[];
  /** What the master is told about each slot: name, resources, and why it is held (null when offered). */
  info(): SlotInfo[];
  /** Why the slot is not offered, or null when it is. */
  held(name: string): string | null;
  /** Holds the slot until an operator releases it, on disk so the hold survives a restart. */
  hold(name: string, message: string): void;
  /** Ends an operator's or a job's hold (a failing health check still holds the slot). */
  release(name: string): void;
  /**
   * Runs the slot's health check (if any); returns true when the slot may be offered. Never rejects: a
   * check that cannot be run fails like one that exits non-zero.
   */
  check(slot: Slot): Promise<boolean>;
}

// A health check that does not answer in this time counts as failed: a hung probe is a broken slot.
const HEALTH_TIMEOUT_MS = 30_000;

/** Runs a health check command; `why` says how it failed (exit status and first line of output). */
async function runCheck(command: string): Promise<{ code: number; why: string }> {
  const spawn = () =>
    Bun.spawn(["/bin/sh", "-c", command], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  let p: ReturnType<typeof spawn>;
  try {
    p = spawn();
  } catch (err) {
    // No shell to run it (a broken host, no processes left): the slot cannot be vouched for.
    return { code: -1, why: `could not run: ${coerceError(err).message}` };
  }
  const timer = setTimeout(() => p.kill("SIGKILL"), HEALTH_TIMEOUT_MS);
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  clearTimeout(timer);
  const first = (err.trim() || out.trim()).split("\n")[0]?.slice(0, 200);
  return { code, why: `exit ${code}${first ? `: ${first}` : ""}` };
}

/** Opens the slot book kept in `dir` (one file per held slot, holding the reason). */
export function createSlotBook(
  dir: string,
  slots: Slot[],
  log: ConsolaInstance,
  changed: () => void,
): SlotBook {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const broken = new Map<string, string>();
  for (const f of readdirSync(dir)) {
    if (slots.some((s) => s.name === f)) broken.set(f, readFileSync(join(dir, f), "utf8").trim());
  }
  const unhealthy = new Map<string, string>();
  return {
    slots,
    info: () =>
      slots.map((s) => ({
        name: s.name,
        resources: s.resources,
        held: broken.get(s.name) ?? unhealthy.get(s.name) ?? null,
      })),
    held: (name) => broken.get(name) ?? unhealthy.get(name) ?? null,
    hold(name, message) {
      if (!slots.some((s) => s.name === name)) return;
      broken.set(name, message);
      writeFileSync(join(dir, name), `${message}\n`, { mode: 0o600 });
      log.warn(`slot ${name} held: ${message}`, { slot: name });
      changed();
    },
    release(name) {
      if (!broken.delete(name)) return;
      rmSync(join(dir, name), { force: true });
      log.info(`slot ${name} released`, { slot: name });
      changed();
    },
    async check(slot) {
      if (!slot.health_check) return !broken.has(slot.name);
      const { code, why } = await runCheck(slot.health_check);
      // Read after the check: another check of the slot may have changed it meanwhile.
      const before = unhealthy.get(slot.name);
      if (code === 0) unhealthy.delete(slot.name);
      else unhealthy.set(slot.name, `health check failed (${why})`);
      if (before !== unhealthy.get(slot.name)) {
        if (code !== 0) log.warn(`slot ${slot.name}: ${unhealthy.get(slot.name)}`, { slot: slot.name });
        changed();
      }
      return code === 0 && !broken.has(slot.name);
    },
  };
}

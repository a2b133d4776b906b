import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import type { Config } from "../config/schema.ts";
import type { SlotInfo } from "../protocol/wire.ts";
import type { Slot } from "../runner/contract.ts";

/*
 * A worker's slots and why any of them is not offered. Two kinds of hold: a failed health check (cleared
 * by the next passing check) and a mark-broken hold from a job or an operator, kept on disk so it
 * survives a restart, until an operator releases it.
 */

/** The slots of this worker: `[[worker.slots]]` when given, else `capacity` plain ones. */
export function slotsFromConfig(cfg: Config): Slot[] {
  if (cfg.worker.slots.length > 0) {
    return cfg.worker.slots.map((s, index) => ({
      name: s.name,
      index,
      resources: s.resources,
      devices: s.devices,
      groups: s.groups,
      memory: s.memory,
      cpus: s.cpus,
      pids: s.pids,
      healthCheck: s.health_check,
    }));
  }
  return Array.from({ length: cfg.worker.capacity }, (_, index) => ({
    name: `slot-${index}`,
    index,
    resources: [],
    devices: [],
    groups: [],
    memory: null,
    cpus: null,
    pids: null,
    healthCheck: "",
  }));
}

export interface SlotBook {
  slots: Slot[];
  info(): SlotInfo[];
  held(name: string): string | null;
  hold(name: string, message: string): void;
  release(name: string): void;
  /** Runs the slot's health check (if any); returns true when the slot may be offered. */
  check(slot: Slot): Promise<boolean>;
}

// A health check that does not answer in this time counts as failed: a hung probe is a broken slot.
const HEALTH_TIMEOUT_MS = 30_000;

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
      log.warn(`slot ${name} held: ${message}`);
      changed();
    },
    release(name) {
      if (!broken.delete(name)) return;
      rmSync(join(dir, name), { force: true });
      log.info(`slot ${name} released`);
      changed();
    },
    async check(slot) {
      if (!slot.healthCheck) return !broken.has(slot.name);
      const p = Bun.spawn(["/bin/sh", "-c", slot.healthCheck], {
        stdout: "pipe",
        stderr: "pipe",
        stdin: "ignore",
      });
      const timer = setTimeout(() => p.kill("SIGKILL"), HEALTH_TIMEOUT_MS);
      const [out, err, code] = await Promise.all([
        new Response(p.stdout).text(),
        new Response(p.stderr).text(),
        p.exited,
      ]);
      clearTimeout(timer);
      const before = unhealthy.get(slot.name);
      if (code === 0) unhealthy.delete(slot.name);
      else {
        const why = (err.trim() || out.trim()).split("\n")[0]?.slice(0, 200);
        unhealthy.set(slot.name, `health check failed (exit ${code}${why ? `: ${why}` : ""})`);
      }
      if (before !== unhealthy.get(slot.name)) {
        if (code !== 0) log.warn(`slot ${slot.name}: ${unhealthy.get(slot.name)}`);
        changed();
      }
      return code === 0 && !broken.has(slot.name);
    },
  };
}

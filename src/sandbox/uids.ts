import { readdirSync, readFileSync } from "node:fs";
import { delay } from "../lib/loop.ts";

/**
 * The uid of a worker's slot: uid_base + 1024 x (a number from the worker's name) + the slot's index, so
 * several workers on one host (tests, or a host split by channel) never share a uid.
 */
export function slotUid(uidBase: number, worker: string, index: number): number {
  let h = 2166136261;
  for (const c of worker) h = Math.imul(h ^ c.charCodeAt(0), 16777619) >>> 0;
  return uidBase + (h % 65536) * 1024 + index;
}

/** Host pids of every process whose real, effective, saved or filesystem uid is in [uid, uid + count). */
export function pidsOfUid(uid: number, count = 1): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const line = /^Uid:\s+(.*)$/m.exec(readFileSync(`/proc/${name}/status`, "utf8"))?.[1];
      if (line?.split(/\s+/).some((u) => Number(u) >= uid && Number(u) < uid + count)) out.push(Number(name));
    } catch {
      // Gone while we looked.
    }
  }
  return out;
}

/**
 * Kills every process running as a slot's uid and waits until none is left, so the uid is never handed to
 * the next job while anything of the last one survives. The pid namespace's death normally leaves
 * nothing; this is the check that it did.
 */
export async function killUid(uid: number, count = 1): Promise<number> {
  let killed = 0;
  for (let round = 0; round < 100; round++) {
    const pids = pidsOfUid(uid, count);
    if (pids.length === 0) return killed;
    for (const pid of pids) {
      try {
        process.kill(pid, "SIGKILL");
        killed++;
      } catch {
        // Already gone.
      }
    }
    await delay(20);
  }
  throw new Error(`processes of uid ${uid} survive SIGKILL: ${pidsOfUid(uid, count).join(", ")}`);
}

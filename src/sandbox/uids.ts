import { readdirSync, readFileSync } from "node:fs";
import { delay } from "../lib/loop.ts";

/** Host pids of every process whose real, effective, saved or filesystem uid is `uid`. */
export function pidsOfUid(uid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const line = /^Uid:\s+(.*)$/m.exec(readFileSync(`/proc/${name}/status`, "utf8"))?.[1];
      if (line?.split(/\s+/).some((u) => Number(u) === uid)) out.push(Number(name));
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
export async function killUid(uid: number, quick = false): Promise<number> {
  let killed = 0;
  for (let round = 0; round < 100; round++) {
    const pids = pidsOfUid(uid);
    if (pids.length === 0) return killed;
    if (quick && round === 0 && pids.length === 0) return 0;
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
  throw new Error(`processes of uid ${uid} survive SIGKILL: ${pidsOfUid(uid).join(", ")}`);
}

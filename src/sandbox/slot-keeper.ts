// Slot keepers: what a slot keeps from one job to the next. A keeper is the launcher in --slot-keeper mode
// (src/sandbox/helper/README.md "Slot keeper"): it holds a network namespace with lo up and a mount
// namespace in which the slot's scratch volume is mounted. Each job's launcher joins both (--slot PID) and
// gets the volume as /tmp (--scratch-slot DIR); after the job, the keeper empties the volume again. So a
// job no longer makes and tears down a network namespace, a loop device and an ext4 mount: those cost more
// than the rest of a launch together.
//
// A keeper dies with the worker (PR_SET_PDEATHSIG), and its volume's loop device clears itself once no
// namespace holds the mount: a crash leaves only the image file, which the start-up sweep removes.

import { mkdirSync } from "node:fs";
import type { Subprocess } from "bun";
import { AppError } from "../lib/errors.ts";
import { releaseHold, type Scratch } from "./scratch.ts";

export interface SlotKeeper {
  /** Its pid, for the launcher's --slot. */
  readonly pid: number;
  /** The volume it holds (mounted in its mount namespace), or null. */
  readonly volume: Scratch | null;
  /**
   * The launcher's options for a job of this slot: its namespaces, the skeleton as the root (for a job on
   * the host's root) and the volume as /tmp (when the job's scratch is the keeper's).
   */
  launchArgs(o: { skeleton: boolean; volume: boolean }): string[];
  /** Whether it still runs (a keeper that died is replaced before the next job). */
  alive(): boolean;
  /**
   * Empties the volume after a job (every process of which is gone); rejects when it could not. Resolves
   * "stale" when the host's mounts changed since the keeper started: its copy of them (and the skeleton)
   * is out of date, and a new keeper should serve the next job.
   */
  wipe(): Promise<"wiped" | "stale">;
  /** Ends it and waits for it; its volume is then the caller's to release. */
  stop(): Promise<void>;
}

/** What the read-only root of the slot's host-root jobs holds besides the host's own entries. */
export interface SkeletonOptions {
  /** Bound at /kiln/bin/kiln. */
  kilnBin: string;
  /** Host paths hidden from jobs. */
  masks: string[];
  /** Host device nodes the slot's jobs get in /dev. */
  devices: string[];
}

/**
 * Starts a keeper with `launcher`; with a volume (a loop image attached ahead, held by this process until
 * the keeper's mount holds it), mounted at `dir`, a directory on the host the keeper mounts over in its
 * own namespace only. The skeleton of its host-root jobs is built at `dir`.root the same way.
 */
export async function startSlotKeeper(
  launcher: string,
  dir: string,
  volume: Scratch | null,
  skeleton: SkeletonOptions,
): Promise<SlotKeeper> {
  if (volume && (volume.backend !== "loop" || !volume.loop)) {
    throw new Error("a slot keeper's volume is a loop image attached ahead");
  }
  const root = `${dir}.root`;
  if (volume) mkdirSync(dir, { recursive: true, mode: 0o700 });
  mkdirSync(root, { recursive: true, mode: 0o700 });
  const child: Subprocess<"pipe", "pipe", "inherit"> = Bun.spawn(
    [
      launcher,
      "--slot-keeper",
      ...(volume?.backend === "loop" ? ["--dir", dir, "--scratch-dev", volume.loop!.device] : []),
      "--skeleton",
      root,
      "--kiln-bin",
      skeleton.kilnBin,
      ...skeleton.masks.flatMap((m) => ["--mask", m]),
      ...skeleton.devices.flatMap((d) => ["--dev", d]),
    ],
    { stdin: "pipe", stdout: "pipe", stderr: "inherit" },
  );
  const lines = readLines(child.stdout);
  const first = await lines.next();
  // The keeper's mount holds the device now (or never will): this process's hold can go either way.
  if (volume) releaseHold(volume);
  const ready = first.done ? null : /^ready (\d+)$/.exec(first.value);
  if (!ready) {
    child.kill("SIGKILL");
    await child.exited;
    const said = first.done ? `exited with ${child.exitCode}` : first.value;
    throw new AppError("SLOT_KEEPER", `the slot keeper did not start: ${said}`, { status: 500 });
  }
  let exited = false;
  void child.exited.then(() => {
    exited = true;
  });
  return {
    pid: Number(ready[1]),
    volume,
    launchArgs: (o) => [
      "--slot",
      ready[1]!,
      ...(o.skeleton ? ["--slot-root", root] : []),
      ...(o.volume && volume ? ["--scratch-slot", dir] : []),
    ],
    alive: () => !exited,
    async wipe() {
      if (exited) throw new Error("the slot keeper is gone");
      child.stdin.write("wipe\n");
      await child.stdin.flush();
      const got = await lines.next();
      if (got.done) throw new Error(`the slot keeper exited with ${await child.exited}`);
      if (got.value === "wiped stale") return "stale";
      if (got.value !== "wiped") throw new Error(got.value);
      return "wiped";
    },
    async stop() {
      try {
        await child.stdin.end();
      } catch {
        // Already gone.
      }
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await child.exited;
      clearTimeout(timer);
    },
  };
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      yield buf.slice(0, nl);
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) yield buf;
}

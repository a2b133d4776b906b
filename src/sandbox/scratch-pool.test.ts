import { afterAll, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loopBackedBy } from "./loop-device.ts";
import type { Scratch, ScratchConfig } from "./scratch.ts";
import { destroyScratch, sweepScratch } from "./scratch.ts";
import { createScratchPool } from "./scratch-pool.ts";

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
if (!isRoot) console.warn("scratch-pool.test.ts: not running as root, so its tests are skipped");

const fileOf = (s: Scratch) => {
  if (s.backend !== "loop") throw new Error(`expected a loop volume, got ${s.backend}`);
  return s.file;
};

async function until(what: string, cond: () => boolean) {
  for (let i = 0; i < 1000 && !cond(); i++) await Bun.sleep(10);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

describe.skipIf(!isRoot)("scratch pool (root)", () => {
  const base = join(tmpdir(), `kiln-pool-test-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  const errors: string[] = [];
  const name = (slot: string, seq: number) => `d-${slot}-${seq}`;
  // Each test its own directory, so one that fails half-way leaves nothing in the next one's way.
  let cfg: ScratchConfig = { backend: "loop", dir: join(base, "scratch-0") };
  let made = 0;
  beforeEach(() => {
    cfg = { backend: "loop", dir: join(base, `scratch-${++made}`) };
    errors.length = 0;
  });
  const images = () => (existsSync(cfg.dir) ? readdirSync(cfg.dir).sort() : []);

  afterAll(async () => {
    for (let i = 1; i <= made; i++) await sweepScratch({ backend: "loop", dir: join(base, `scratch-${i}`) });
    rmSync(base, { recursive: true, force: true });
  });

  test("a volume made ahead goes to exactly one job; the next job gets a new one", async () => {
    const pool = createScratchPool(cfg, name, (m) => errors.push(m));
    pool.prepare("s0", 16 * MiB);
    await until("the volume made ahead", () => images().includes("d-s0-0.img"));
    const first = await pool.take("s0", 16 * MiB);
    expect(fileOf(first)).toBe(join(cfg.dir, "d-s0-0.img"));
    // Nothing was prepared since: the second job's volume is made for it, never the first one again.
    const second = await pool.take("s0", 16 * MiB);
    expect(fileOf(second)).toBe(join(cfg.dir, "d-s0-1.img"));
    // A job asking while its volume is still being made waits for that one.
    pool.prepare("s0", 16 * MiB);
    const third = await pool.take("s0", 15 * MiB + 1);
    expect(fileOf(third)).toBe(join(cfg.dir, "d-s0-2.img"));
    expect(third.sizeBytes).toBe(16 * MiB);
    for (const s of [first, second, third]) await destroyScratch(cfg, s);
    expect(images()).toEqual([]);
    expect(errors).toEqual([]);
  });

  test("a volume made ahead in another size is destroyed, and drain destroys what is left", async () => {
    const pool = createScratchPool(cfg, name, (m) => errors.push(m));
    pool.prepare("s1", 8 * MiB);
    const big = await pool.take("s1", 32 * MiB);
    expect(big.sizeBytes).toBe(32 * MiB);
    await until("the 8 MiB volume to be destroyed", () => images().length === 1);
    expect(images()).toEqual([fileOf(big).slice(cfg.dir.length + 1)]);
    pool.prepare("s1", 32 * MiB);
    pool.prepare("s2", 8 * MiB);
    pool.prepare("s2", 8 * MiB); // one per slot: a second call while one is made ahead changes nothing
    await pool.drain();
    expect(images()).toEqual([fileOf(big).slice(cfg.dir.length + 1)]);
    await destroyScratch(cfg, big);
    expect(images()).toEqual([]);
    expect(errors).toEqual([]);
  });

  test("a volume comes attached to a loop device that clears itself; release waits for that, drain for the deletion", async () => {
    const pool = createScratchPool(cfg, name, (m) => errors.push(m));
    pool.prepare("s5", 16 * MiB);
    const v = await pool.take("s5", 16 * MiB);
    if (v.backend !== "loop" || !v.loop) throw new Error("expected a loop volume attached ahead");
    expect(loopBackedBy(v.loop.nr, v.file)).toBe(true);
    // Nothing ever mounted it (a launch that failed early): letting go of it clears the device.
    await pool.release(v);
    expect(loopBackedBy(v.loop.nr, v.file)).toBe(false);
    await pool.drain();
    expect(images()).toEqual([]);
    expect(errors).toEqual([]);
  });

  test("a volume that cannot be made ahead is reported, and the job's own attempt fails the same way", async () => {
    mkdirSync(base, { recursive: true });
    const blocked: ScratchConfig = { backend: "loop", dir: join(base, "not-a-dir") };
    writeFileSync(blocked.dir, "a file where the scratch directory should be");
    const seen: string[] = [];
    const pool = createScratchPool(blocked, name, (m) => seen.push(m));
    pool.prepare("s3", 8 * MiB);
    await until("the failure to be reported", () => seen.length > 0);
    expect(seen[0]).toContain("could not make the next scratch volume of s3 ahead");
    await expect(pool.take("s3", 8 * MiB)).rejects.toThrow();
    await pool.drain();
  });

  test("sizes too big to hold idle and backends without images are never made ahead", async () => {
    const pool = createScratchPool(cfg, name, (m) => errors.push(m));
    pool.prepare("s4", 2048 * MiB);
    // Had the big one been made ahead, it would have taken sequence number 0 and been destroyed here.
    const next = await pool.take("s4", 16 * MiB);
    expect(fileOf(next)).toBe(join(cfg.dir, "d-s4-0.img"));
    await destroyScratch(cfg, next);
    const tmpfs = createScratchPool({ backend: "tmpfs", dir: join(base, "unused") }, name, (m) =>
      errors.push(m),
    );
    tmpfs.prepare("s4", 16 * MiB);
    expect(await tmpfs.take("s4", 16 * MiB)).toEqual({ backend: "tmpfs", sizeBytes: 16 * MiB });
    expect(existsSync(join(base, "unused"))).toBe(false);
    expect(images()).toEqual([]);
    expect(errors).toEqual([]);
  });
});

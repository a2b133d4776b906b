import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

/*
 * A debootstrap of bookworm takes minutes: integration tests that need a built template share finished
 * trees through SEED_DIR/HASH (a copy of a worker's DATA/worker/templates/HASH, complete.json included).
 * A test that built one saves it; a test that needs it seeds its worker's cache before the first job, so
 * only the first of them on a machine pays for the build. Copies are hard links: a template tree is never
 * written once it is complete (jobs see it read-only or as an overlay's lower layer). The hash covers the
 * recipe, not the archive's contents: delete SEED_DIR to force a fresh debootstrap.
 */

/** Where finished template trees are kept between test runs. */
export const SEED_DIR = "/var/tmp/kiln-test-templates";

const cacheOf = (data: string, hash: string) => join(data, "worker", "templates", hash);

function copyTree(from: string, to: string): void {
  const tmp = `${to}.copy-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  const r = Bun.spawnSync(["cp", "-al", from, tmp], { stderr: "pipe" });
  if (r.exitCode !== 0) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`cp -al ${from} ${tmp}: ${r.stderr.toString()}`);
  }
  renameSync(tmp, to);
}

/** Puts a saved tree of template `hash` into the worker cache of data dir `data`; true when there was one. */
export function seedTemplate(data: string, hash: string): boolean {
  const saved = join(SEED_DIR, hash);
  if (!existsSync(join(saved, "complete.json")) || existsSync(cacheOf(data, hash))) return false;
  mkdirSync(join(data, "worker", "templates"), { recursive: true });
  copyTree(saved, cacheOf(data, hash));
  return true;
}

/** Saves the finished tree of template `hash` from the worker cache of data dir `data`, if not saved yet. */
export function saveTemplate(data: string, hash: string): void {
  const built = cacheOf(data, hash);
  if (existsSync(join(SEED_DIR, hash)) || !existsSync(join(built, "complete.json"))) return;
  mkdirSync(SEED_DIR, { recursive: true, mode: 0o700 });
  copyTree(built, join(SEED_DIR, hash));
}

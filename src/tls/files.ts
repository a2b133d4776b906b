import { chmodSync, existsSync, mkdirSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/*
 * Where keys live on disk. Private keys are 0600 and their directory 0700 from the moment they exist: a
 * file is written under a temporary name created with its final mode (never chmod-ed after the secret is
 * in it) and renamed into place, so a crash leaves either the old file or the new one, never half a key.
 */

/** Creates `dir` (and parents) if missing and makes sure it is 0700. */
export function ensurePrivateDir(dir: string) {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}

/** Writes `text` to `file` atomically with `mode` (0600 for keys, 0644 for certificates). */
export function writeAtomic(file: string, text: string, mode: 0o600 | 0o644) {
  const tmp = join(file, "..", `.${file.split("/").pop()}.${process.pid}.${Date.now()}.tmp`);
  writeFileSync(tmp, text, { mode, flag: "wx" });
  renameSync(tmp, file);
}

/** True when `file` exists; a private one wider than 0600 is narrowed to 0600 (an operator's copy, a restore). */
export function existsPrivate(file: string): boolean {
  if (!existsSync(file)) return false;
  if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
  return true;
}

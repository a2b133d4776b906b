// Reading and writing cgroup interface files: absent files read as null or nothing, and every write reaches
// the kernel as one write(2) to a file that must already exist.

import {
  closeSync,
  constants,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { AppError, coerceError } from "../../lib/errors.ts";

/** The names of the cgroups directly below dir; none when dir is gone. */
export function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return [];
  }
}

/** dir and every cgroup below it, parents before children. */
export function subtree(dir: string): string[] {
  return [dir, ...subdirs(dir).flatMap((name) => subtree(join(dir, name)))];
}

/** The pids in dir's own cgroup.procs (not its children's); none when the cgroup is gone. */
export function readPids(dir: string): number[] {
  const text = readText(join(dir, "cgroup.procs"));
  if (text === null) return [];
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map(Number);
}

/** The whole file as text, or null when it cannot be read (absent on this kernel, or removed). */
export function readText(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** A short value read from offset 0 of an open descriptor, which is how memory.peak keeps its reset. */
export function preadText(fd: number): string {
  const buf = Buffer.alloc(64);
  const n = readSync(fd, buf, 0, buf.length, 0);
  return buf.toString("utf8", 0, n);
}

/** The whitespace-separated words of a file (cgroup.controllers, cgroup.subtree_control); none if absent. */
export function readWords(path: string): string[] {
  return (readText(path) ?? "").split(/\s+/).filter((w) => w !== "");
}

/** A file holding one number, or null when it is absent or not a number. */
export function readNumber(path: string): number | null {
  const text = readText(path);
  if (text === null) return null;
  const n = Number(text.trim());
  return Number.isFinite(n) ? n : null;
}

/** The value of key in a file of "key value" lines (cpu.stat, memory.events, pids.events), or null. */
export function readKeyed(path: string, key: string): number | null {
  const text = readText(path);
  if (text === null) return null;
  for (const line of text.split("\n")) {
    const [k, v] = line.split(" ");
    if (k === key && v !== undefined) return Number(v);
  }
  return null;
}

/**
 * Writes value to an existing interface file in a single write(2), which is how cgroupfs parses it; throws
 * the raw errno error (ENOENT for a missing file, which is never created: no O_CREAT).
 */
export function writeFile(path: string, value: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_TRUNC);
  try {
    writeSync(fd, value);
  } finally {
    closeSync(fd);
  }
}

/** Writes value to dir/file, or throws CGROUP_WRITE_FAILED naming the value, the file and the reason. */
export function writeControl(dir: string, file: string, value: string | number): void {
  const path = join(dir, file);
  try {
    writeFile(path, String(value));
  } catch (error) {
    const message = `cannot write ${JSON.stringify(String(value))} to ${path}: ${coerceError(error).message}`;
    throw new AppError("CGROUP_WRITE_FAILED", message, { status: 500, cause: error });
  }
}

/** writeControl for files only some kernels or configurations have: a no-op where the file is absent. */
export function writeOptional(dir: string, file: string, value: string | number): void {
  if (existsSync(join(dir, file))) writeControl(dir, file, value);
}

/** For writes racing with removal: false when the file (or the whole cgroup) is gone, else writes it. */
export function writeIfExists(path: string, value: string): boolean {
  try {
    writeFile(path, value);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw error;
  }
}

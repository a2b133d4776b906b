import { dlopen, FFIType } from "bun:ffi";
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { AppError } from "./errors.ts";

/*
 * Process-lifetime locks with flock(2): the kernel drops a lock the moment its holder dies, however it
 * dies, so a lock is never stale and needs no clean-up. Node has no flock, hence libc through bun:ffi
 * (as reexec.ts does for execve).
 */

const LOCK_EX = 2;
const LOCK_NB = 4;

let libc: { symbols: { flock(fd: number, op: number): number } } | null = null;
const flock = (fd: number, op: number) => {
  libc ??= dlopen("libc.so.6", { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } });
  return libc.symbols.flock(fd, op);
};

/** A held lock file: `release` unlocks and closes it (it is also released when the process ends). */
export interface Lock {
  path: string;
  release(): void;
}

/**
 * Takes the exclusive lock on `path` for as long as this process lives (or until release), and writes
 * `holder` (who holds it: pid, role, address) into the file. If another process holds it, throws an
 * AppError with `code` whose message is `busy(what the holder wrote)`.
 */
export function holdLock(path: string, holder: string, code: string, busy: (other: string) => string): Lock {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const fd = openSync(path, "a+", 0o600);
  if (flock(fd, LOCK_EX | LOCK_NB) !== 0) {
    let other = "";
    try {
      other = readFileSync(path, "utf8").trim();
    } catch {
      // Unreadable: the message still says the lock is held.
    }
    closeSync(fd);
    throw new AppError(code, busy(other || "another process"), { status: 409 });
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${holder}\n`, 0);
  return {
    path,
    release() {
      closeSync(fd);
    },
  };
}

import { dlopen, FFIType, ptr } from "bun:ffi";

/*
 * Bun reads BUN_TMPDIR once at start-up, so setting it from JavaScript is too late for the embedded libSQL
 * addon, which is unpacked there on first use (and /tmp is often mounted noexec on servers). Roles that
 * open the store therefore re-execute themselves, once, with BUN_TMPDIR in the environment: execve(2)
 * replaces the process, so no parent is left behind and the pid stays the same for supervisors.
 */

const cstr = (s: string) => Buffer.from(`${s}\0`);

/** Replaces this process with itself plus `env` additions; returns only if execve failed. */
export function reexecWith(env: Record<string, string>): never | undefined {
  const libc = dlopen("libc.so.6", {
    execve: { args: [FFIType.cstring, FFIType.ptr, FFIType.ptr], returns: FFIType.i32 },
  });
  const argv = [process.execPath, ...process.argv.slice(process.argv[1]?.startsWith("/$bunfs/") ? 2 : 1)];
  const envs = Object.entries({ ...process.env, ...env }).map(([k, v]) => `${k}=${v}`);
  const keep = [...argv, ...envs].map(cstr);
  const table = (items: Buffer[]) => {
    const arr = new BigUint64Array(items.length + 1);
    items.forEach((b, i) => {
      arr[i] = BigInt(ptr(b));
    });
    return arr;
  };
  const argvPtrs = table(keep.slice(0, argv.length));
  const envPtrs = table(keep.slice(argv.length));
  libc.symbols.execve(ptr(keep[0]!), ptr(argvPtrs), ptr(envPtrs));
  return undefined;
}

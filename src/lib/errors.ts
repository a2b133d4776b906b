import { statusOf } from "./error-codes.ts";

/**
 * The one error type Kiln raises on purpose: a stable `code` (registered in error-codes.ts), a message
 * that says what to do, and an HTTP status (the registry's for the code unless the call site gives one).
 */
export class AppError extends Error {
  readonly code: string;
  readonly status: number;
  /** True when the master raised it and a client read it from the response (see errorFrom). */
  readonly remote: boolean;

  constructor(
    code: string,
    message: string,
    options: { status?: number; cause?: unknown; remote?: boolean } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "AppError";
    this.code = code;
    this.status = options.status ?? statusOf(code);
    this.remote = options.remote ?? false;
  }
}

/** Turns anything thrown into an Error, so a `catch` can always read `.message`. */
export function coerceError(err: unknown): Error {
  if (err instanceof Error) return err;
  if (typeof err === "string") return new Error(err);
  try {
    return new Error(JSON.stringify(err));
  } catch {
    return new Error(String(err));
  }
}

/**
 * True when `err` says a disk is full: ENOSPC (or EDQUOT) from the file system, or SQLite's SQLITE_FULL,
 * which libSQL reports as a code or only in the message ("database or disk is full").
 */
export function isDiskFull(err: unknown): boolean {
  for (let e: unknown = err; e; e = (e as { cause?: unknown }).cause) {
    const code = String((e as { code?: unknown }).code ?? "");
    if (/ENOSPC|EDQUOT|SQLITE_FULL/.test(code)) return true;
    if (/database or disk is full|ENOSPC|no space left on device/i.test(String((e as Error).message ?? "")))
      return true;
    if (e === (e as { cause?: unknown }).cause) break;
  }
  return false;
}

/** The error a request gets while the master's own disk is full: the master's problem, said plainly. */
export const storageFull = (dataDir: string, cause?: unknown) =>
  new AppError(
    "STORAGE_FULL",
    `the master's disk is full (data dir ${dataDir}): nothing was written; free space there and try again`,
    { status: 507, cause },
  );

/** A 404 `WHAT_NOT_FOUND` AppError that tells the caller how to list the `what`s there are. */
export const notFound = (what: string, id: string | number) =>
  new AppError(`${what.toUpperCase()}_NOT_FOUND`, `no ${what} ${id}: list them with \`kiln ${what}s\``, {
    status: 404,
  });

/** A 400 AppError with `code` (BAD_REQUEST unless given) for a request the master cannot take. */
export const badRequest = (message: string, code = "BAD_REQUEST") =>
  new AppError(code, message, { status: 400 });

/** The AppError a failed Kiln API response carries (`{"error":{"code","message"}}`), or one naming its status. */
export async function errorFrom(res: Response, who = "the master"): Promise<AppError> {
  const e = ((await res.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null)
    ?.error;
  return new AppError(e?.code ?? `HTTP_${res.status}`, e?.message ?? `${who} answered ${res.status}`, {
    status: res.status,
    remote: true,
  });
}

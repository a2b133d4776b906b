import type { Context } from "hono";

/*
 * How long a connection may do nothing before the master closes it, and how a request keeps its
 * connection counted as active while it is legitimately slow.
 *
 * Measured on Bun 1.4.5 (the pinned runtime):
 *   - Before a request's head is complete the runtime itself closes the socket after about 10 s, whatever
 *     `idleTimeout` says: slow or trickled headers (slowloris) never reach our code.
 *   - After the head, `idleTimeout` counts seconds without a byte *sent*: bytes the client sends in a body
 *     do not re-arm it, and `idleTimeout: 0` (never) let a client that stops mid-body, or keeps a
 *     keep-alive connection open without a request, hold a socket for ever.
 *   - `server.timeout(req, s)` re-arms the timer for that request's connection, and a value set for one
 *     request stays on the connection for the next ones.
 * So the server runs with a bounded idle timeout, and readers re-arm it as bytes arrive (body uploads of any
 * length work as long as bytes keep coming); a log follower re-arms it each time it looks for more log,
 * and slow work of the master's own (copying a release, hashing an upload) re-arms it while it lasts.
 */

/**
 * Seconds a connection may stay silent (`master.idle_timeout`, 60 s by default: long enough for a client
 * on a slow link, short enough that a thousand stalled sockets are gone within a minute). Bun accepts at
 * most 255.
 */
export const idleSeconds = (ms: number) => Math.min(255, Math.max(1, Math.ceil(ms / 1000)));

/** What the server passes to the app with each request (Hono's `c.env`). */
export interface RequestEnv {
  ip?: { address: string } | null;
  /** Counts the request's connection as active now: the idle timeout starts again. */
  rearm?: () => void;
  /** The idle timeout in force, in seconds. */
  idleSeconds?: number;
}

/** How often slow work re-arms its connection: well within the idle timeout. */
const rearmEveryMs = (c: Context) => (((c.env as RequestEnv | undefined)?.idleSeconds ?? 60) * 1000) / 3;

/** Re-arms the idle timer of `c`'s connection; a no-op outside the real server (tests). */
export const rearmOf =
  (c: Context): (() => void) =>
  () =>
    (c.env as RequestEnv | undefined)?.rearm?.();

/** Runs `work`, keeping `c`'s connection counted as active until it settles: the master is the slow one. */
export async function whileWorking<T>(c: Context, work: () => Promise<T>): Promise<T> {
  const rearm = rearmOf(c);
  rearm();
  const timer = setInterval(rearm, rearmEveryMs(c));
  try {
    return await work();
  } finally {
    clearInterval(timer);
    rearm();
  }
}

/**
 * Runs `work` on `body` wrapped so that each chunk that arrives re-arms `c`'s idle timer (a client that
 * stops sending is still cut off); once the body has ended, the master's own work on it (hashing, storing)
 * keeps the connection active as whileWorking does.
 */
export async function receiving<T>(
  c: Context,
  body: ReadableStream<Uint8Array> | null,
  work: (body: ReadableStream<Uint8Array> | null) => Promise<T>,
): Promise<T> {
  const rearm = rearmOf(c);
  let timer: ReturnType<typeof setInterval> | undefined;
  // Pulled one chunk at a time, with no queue of its own (highWaterMark 0): a fast sender still waits for
  // the disk, as it does reading the request body directly.
  const reader = body?.getReader();
  const flowing = reader
    ? new ReadableStream<Uint8Array>(
        {
          async pull(out) {
            const { done, value } = await reader.read();
            rearm();
            if (done) {
              timer = setInterval(rearm, rearmEveryMs(c));
              out.close();
            } else out.enqueue(value);
          },
          cancel: (reason) => reader.cancel(reason),
        },
        { highWaterMark: 0 },
      )
    : null;
  try {
    return await work(flowing);
  } finally {
    clearInterval(timer);
    rearm();
  }
}

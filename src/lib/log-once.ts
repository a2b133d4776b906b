/*
 * Refusals an operator may need to hear about (a worker with a bad name, a script sending the wrong
 * body, someone probing the port) are logged once per kind, not once per request: a client that repeats
 * one mistake a thousand times a second must not flood the log or the disk under it. The first of a kind
 * is told in full; later ones are counted, and the count is told once per window, with the last message.
 */

/** Per-kind throttle of a log line; `kinds` must come from a bounded set (error codes, route patterns). */
export interface LogOnce {
  /** Logs `message` if it is the first of `kind` in this window, else counts it. */
  (kind: string, message: string): void;
  /** Tells the counts still pending and stops the timers (a stopping server). */
  flush(): void;
}

/** Control characters and line breaks a client put in a string, escaped so one log record stays one line. */
export const printable = (text: string) =>
  text.replace(
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );

/**
 * A throttle that calls `emit` with the first message of each kind, then at most once every `windowMs`
 * with how many more came (a minute by default: a person reading the log sees a steady trouble at once
 * and a tally after, never a flood).
 */
export function logOnce(emit: (message: string) => void, windowMs = 60_000): LogOnce {
  const kinds = new Map<string, { more: number; last: string; timer: ReturnType<typeof setTimeout> }>();
  const tell = (kind: string) => {
    const k = kinds.get(kind);
    if (!k) return;
    if (k.more === 0) {
      kinds.delete(kind);
      return;
    }
    emit(
      `${k.more} more like it in the last ${Math.round(windowMs / 1000)} s (${kind}); the last: ${k.last}`,
    );
    k.more = 0;
    k.timer = setTimeout(() => tell(kind), windowMs);
    k.timer.unref?.();
  };
  const once = ((kind: string, message: string) => {
    const text = printable(message);
    const k = kinds.get(kind);
    if (k) {
      k.more++;
      k.last = text;
      return;
    }
    emit(`${text} (more of the kind ${kind} are counted for ${Math.round(windowMs / 1000)} s)`);
    const timer = setTimeout(() => tell(kind), windowMs);
    timer.unref?.();
    kinds.set(kind, { more: 0, last: text, timer });
  }) as LogOnce;
  once.flush = () => {
    for (const [kind, k] of kinds) {
      clearTimeout(k.timer);
      if (k.more > 0) emit(`${k.more} more like it (${kind}); the last: ${k.last}`);
    }
    kinds.clear();
  };
  return once;
}

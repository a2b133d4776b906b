/**
 * A memory of what was already said: the returned function is true the first time it sees a key, then
 * false for that key until `windowMs` has passed. It keeps at most `max` keys (the oldest go first), so a
 * stream of distinct keys costs bounded memory. Used to log a refusal that a client repeats (a revoked
 * worker retrying every minute) once at the default level, and its repeats at debug.
 */
export function firstInWindow(windowMs: number, max = 4096): (key: string, now?: number) => boolean {
  const seen = new Map<string, number>();
  return (key, now = Date.now()) => {
    const at = seen.get(key);
    if (at !== undefined && now - at < windowMs) return false;
    seen.delete(key);
    if (seen.size >= max) seen.delete(seen.keys().next().value!);
    seen.set(key, now);
    return true;
  };
}

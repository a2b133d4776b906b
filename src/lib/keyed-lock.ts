/**
 * Runs async work one at a time per key, in the order it was asked for; different keys run side by side.
 * A failed run does not stop the ones after it. `idle()` resolves once everything asked so far has run.
 */
export function keyedLock() {
  const tails = new Map<string, Promise<unknown>>();
  const run = <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const prev = tails.get(key) ?? Promise.resolve();
    const result = prev.then(fn, fn);
    const tail = result.catch(() => {});
    tails.set(key, tail);
    void tail.then(() => {
      if (tails.get(key) === tail) tails.delete(key);
    });
    return result;
  };
  return Object.assign(run, { idle: () => Promise.all([...tails.values()]).then(() => {}) });
}

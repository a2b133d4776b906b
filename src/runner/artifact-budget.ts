import { formatSize } from "../lib/size.ts";

/*
 * One job's artifact budget (worker.artifact_budget): the bytes it may leave on the worker, through
 * `kiln job upload` while it runs and through $KILN_OUT when it ends. Every file is counted before a
 * byte of it is written, so the budget is never passed on disk, only refused.
 */

/** The budget of one job attempt, shared by its API proxy (uploads) and its runner (collection). */
export interface ArtifactBudget {
  readonly limit: number;
  /** Bytes left for more artifacts. */
  left(): number;
  /**
   * Counts `bytes` for artifact `name` (an upload replacing one of the same name gives the old size
   * back). Returns null when it fits; else remembers the refusal and returns a sentence saying so.
   */
  take(name: string, bytes: number): string | null;
  /** The first refusal's sentence, or null: what the job's failure message says. */
  message(): string | null;
}

const refusal = (name: string, bytes: number, limit: number) =>
  `artifact ${name} (${formatSize(bytes)}) passes this job's artifact budget of ${formatSize(limit)} (worker.artifact_budget); it was not kept`;

export function createArtifactBudget(limit: number): ArtifactBudget {
  const sizes = new Map<string, number>();
  let used = 0;
  let first: string | null = null;
  return {
    limit,
    left: () => Math.max(0, limit - used),
    take(name, bytes) {
      const before = sizes.get(name) ?? 0;
      if (used - before + bytes > limit) {
        const why = refusal(name, bytes, limit);
        first ??= why;
        return why;
      }
      used += bytes - before;
      sizes.set(name, bytes);
      return null;
    },
    message: () => first,
  };
}

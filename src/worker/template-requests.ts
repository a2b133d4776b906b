import type { ConsolaInstance } from "consola";
import { AppError, coerceError } from "../lib/errors.ts";
import { errorFields } from "../lib/log.ts";
import type { TemplateSpec } from "../protocol/template.ts";
import type { Runner } from "../runner/contract.ts";
import type { Connection } from "./connection.ts";

/*
 * The worker's template traffic with the master: a running job's `kiln job template NAME` becomes a
 * question to the master answered by request id, the master's build orders go to the runner's template
 * cache, and what the cache holds is reported whenever it changes.
 */

// The master answers from its store at once; this long without an answer means the question was lost.
const ANSWER_TIMEOUT = 30_000;

/** Template questions in flight and the runner's template cache, as the master sees them. */
export interface TemplateRequests {
  /** What template `name` is, as the master knows it; rejects with TEMPLATE_NOT_FOUND or TEMPLATE_UNANSWERED. */
  ask(name: string): Promise<TemplateSpec>;
  /** Hands the master's answer (template.spec) to the question with its request id. */
  answer(requestId: number, template: TemplateSpec | null, error: string | null): void;
  /** Builds the template into the runner's cache (template.build); failures are logged. */
  build(template: TemplateSpec): void;
  /** Tells the master which templates the runner's cache holds. */
  report(): void;
}

/** Template requests over `conn` for `runner`'s template cache (when it has one). */
export function createTemplateRequests(
  conn: Connection,
  runner: Runner,
  log: ConsolaInstance,
): TemplateRequests {
  let nextRequest = 1;
  const waiting = new Map<number, (t: TemplateSpec | null, error: string | null) => void>();
  return {
    ask: (name) =>
      new Promise<TemplateSpec>((resolve, reject) => {
        const requestId = nextRequest++;
        const timer = setTimeout(() => {
          waiting.delete(requestId);
          reject(
            new AppError(
              "TEMPLATE_UNANSWERED",
              `the master did not answer in time what template ${name} is; try again once it is reachable`,
            ),
          );
        }, ANSWER_TIMEOUT);
        waiting.set(requestId, (t, error) => {
          clearTimeout(timer);
          if (t) resolve(t);
          else reject(new AppError("TEMPLATE_NOT_FOUND", error ?? `no template ${name}`));
        });
        conn.send({ type: "template.get", requestId, name });
      }),
    answer(requestId, template, error) {
      const answer = waiting.get(requestId);
      waiting.delete(requestId);
      answer?.(template, error);
    },
    build(template) {
      const cache = runner.templates;
      if (!cache) {
        log.warn(`cannot build template ${template.name}: this worker's runner has no template cache`, {
          code: "NO_TEMPLATE_CACHE",
        });
        return;
      }
      cache.acquire(template).then(
        (t) => t.release(),
        (err) => {
          const e = coerceError(err);
          log.error(e.message, errorFields(e));
        },
      );
    },
    report: () => conn.send({ type: "worker.templates", cached: runner.templates?.list() ?? [] }),
  };
}

import { type ConsolaInstance, type ConsolaReporter, createConsola, type LogObject } from "consola";

export type LogFormat = "human" | "json";
export type LogLevelName = "error" | "warn" | "info" | "debug" | "trace";

const LEVELS: Record<LogLevelName, number> = { error: 0, warn: 1, info: 3, debug: 4, trace: 5 };

/*
 * JSON lines go to stderr, one object per record, so a supervisor (journald, a log shipper) can parse them
 * without guessing. Kiln's own log never carries a job's output: that is data, stored per job.
 */
const jsonReporter: ConsolaReporter = {
  log(obj: LogObject) {
    const [first, ...rest] = obj.args;
    const record: Record<string, unknown> = {
      time: obj.date.toISOString(),
      level: obj.type,
      component: obj.tag || "kiln",
      msg: typeof first === "string" ? first : JSON.stringify(first),
    };
    for (const extra of rest) {
      if (extra && typeof extra === "object" && !(extra instanceof Error)) Object.assign(record, extra);
      else if (extra instanceof Error) record.error = extra.message;
    }
    process.stderr.write(`${JSON.stringify(record)}\n`);
  },
};

let root: ConsolaInstance = createConsola({
  level: LEVELS.info,
  stdout: process.stderr,
  stderr: process.stderr,
});

/** Configures the process-wide logger once, from config: human on a terminal, JSON lines otherwise. */
export function setupLogging(format: LogFormat | "auto", level: LogLevelName) {
  const resolved = format === "auto" ? (process.stderr.isTTY ? "human" : "json") : format;
  root = createConsola({
    level: LEVELS[level],
    stdout: process.stderr,
    stderr: process.stderr,
    reporters: resolved === "json" ? [jsonReporter] : undefined,
  });
}

/** A logger scoped to one component (`master`, `dispatch`, `worker`, ...). */
export function logger(component: string): ConsolaInstance {
  return root.withTag(component);
}

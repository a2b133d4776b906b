import { type ConsolaInstance, type ConsolaReporter, createConsola, type LogObject } from "consola";

/** How records are written: `human` lines for a terminal, `json` lines (one object each) for a supervisor. */
export type LogFormat = "human" | "json";
/** The levels `log.level` accepts, most severe first. */
export type LogLevelName = "error" | "warn" | "info" | "debug" | "trace";

/**
 * Structured fields of one record, passed as the last argument of a log call
 * (`log.warn("job 7: ...", { jobId: 7, slot: "slot-0" })`): top-level keys in JSON, `key=value` in text.
 * The names Kiln uses: `jobId`, `attempt`, `worker`, `slot`, `code` (an AppError's code). An undefined
 * value is left out, so a caller can pass an optional field as it is.
 */
export type LogFields = Record<string, string | number | boolean | null | undefined>;

const LEVELS: Record<LogLevelName, number> = { error: 0, warn: 1, info: 3, debug: 4, trace: 5 };
// A field never replaces what every record has: a caller's `level` must not forge a record's level.
const RESERVED = new Set(["time", "level", "component", "msg", "error"]);

/** True for the plain object a caller passes as fields (not an Error, an array or a class instance). */
function isFields(x: unknown): x is LogFields {
  if (!x || typeof x !== "object" || Array.isArray(x)) return false;
  const proto = Object.getPrototypeOf(x);
  return proto === Object.prototype || proto === null;
}

/*
 * A record's fields: those bound to its logger by withFields (kept in the record as `fields`), then those
 * of the call, which win. The rest of the arguments stay as they are.
 */
function splitArgs(obj: LogObject): { args: unknown[]; fields: LogFields } {
  const fields: LogFields = { ...(isFields(obj.fields) ? obj.fields : {}) };
  const args: unknown[] = [];
  for (const a of obj.args) {
    if (isFields(a)) Object.assign(fields, a);
    else args.push(a);
  }
  for (const [k, v] of Object.entries(fields)) if (v === undefined) delete fields[k];
  return { args, fields };
}

/** `key=value` pairs in the order given; a value with a space, quote or `=` in it is JSON-quoted. */
export function renderFields(fields: LogFields): string {
  return Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => {
      const s = String(v);
      return `${k}=${typeof v === "string" && (s === "" || /[\s"=\\]/.test(s)) ? JSON.stringify(s) : s}`;
    })
    .join(" ");
}

/*
 * JSON lines go to stderr, one object per record, so a supervisor (journald, a log shipper) can parse them
 * without guessing; fields are top-level keys beside time, level, component and msg. Kiln's own log never
 * carries a job's output: that is data, stored per job.
 */
const jsonReporter: ConsolaReporter = {
  log(obj: LogObject) {
    const { args, fields } = splitArgs(obj);
    const [first, ...rest] = args;
    const record: Record<string, unknown> = {
      time: obj.date.toISOString(),
      level: obj.type,
      component: obj.tag || "kiln",
      msg: typeof first === "string" ? first : JSON.stringify(first),
    };
    for (const extra of rest) {
      if (extra instanceof Error) {
        record.error = extra.message;
        const code = (extra as { code?: unknown }).code;
        if (typeof code === "string" && fields.code === undefined) fields.code = code;
      } else record.msg += ` ${typeof extra === "string" ? extra : JSON.stringify(extra)}`;
    }
    for (const [k, v] of Object.entries(fields)) if (!RESERVED.has(k)) record[k] = v;
    process.stderr.write(`${JSON.stringify(record)}\n`);
  },
};

/** Wraps consola's own text reporter so a record's fields follow its message as `key=value`. */
function textReporter(inner: ConsolaReporter): ConsolaReporter {
  return {
    log(obj, ctx) {
      const { args, fields } = splitArgs(obj);
      const pairs = renderFields(fields);
      if (pairs) {
        if (typeof args[0] === "string") args[0] = `${args[0]} ${pairs}`;
        else args.push(pairs);
      }
      inner.log({ ...obj, args }, ctx);
    },
  };
}

function create(format: LogFormat, level: LogLevelName): ConsolaInstance {
  const c = createConsola({ level: LEVELS[level], stdout: process.stderr, stderr: process.stderr });
  return c.setReporters(format === "json" ? [jsonReporter] : c.options.reporters.map(textReporter));
}

let root: ConsolaInstance = create("human", "info");

/** Configures the process-wide logger once, from config: human on a terminal, JSON lines otherwise. */
export function setupLogging(format: LogFormat | "auto", level: LogLevelName) {
  root = create(format === "auto" ? (process.stderr.isTTY ? "human" : "json") : format, level);
}

/** A logger scoped to one component (`master`, `dispatch`, `worker`, ...). */
export function logger(component: string): ConsolaInstance {
  return root.withTag(component);
}

/**
 * A logger that adds `fields` to every record it writes (a call's own fields win), e.g. the worker's
 * name on everything a worker says. Tags and fields of `log` are kept.
 */
export function withFields(log: ConsolaInstance, fields: LogFields): ConsolaInstance {
  // Consola copies unknown keys of its defaults into every record; the reporters read `fields` there.
  const bound = (log.options.defaults as { fields?: unknown }).fields;
  return log.withDefaults({ fields: { ...(isFields(bound) ? bound : {}), ...fields } } as object);
}

/** The fields that say which error a record is about: its AppError code, if it has one. */
export function errorFields(err: unknown): LogFields {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" ? { code } : {};
}

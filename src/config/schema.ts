/*
 * The one typed config. Every key is declared here with its type, default and a sentence on why; the
 * loader refuses anything not declared. appliance/kiln.toml documents the same keys and a test keeps the
 * two in step.
 */

export type KeyType = "string" | "int" | "bool" | "duration" | "size" | "list" | "enum" | "listen";

export interface KeySpec {
  type: KeyType;
  default: unknown;
  values?: readonly string[];
  min?: number;
  max?: number;
}

export const SCHEMA = {
  node: {
    // Where every role keeps its state; service units point BUN_TMPDIR here too.
    data: { type: "string", default: "" },
  },
  log: {
    format: { type: "enum", default: "auto", values: ["auto", "human", "json"] },
    level: { type: "enum", default: "info", values: ["error", "warn", "info", "debug", "trace"] },
  },
  master: {
    listen: { type: "listen", default: "127.0.0.1:7070" },
    db: { type: "string", default: "" },
    url: { type: "string", default: "" },
    heartbeat: { type: "duration", default: 5_000, min: 100 },
    lease: { type: "duration", default: 30_000, min: 500 },
    default_timeout: { type: "duration", default: 7_200_000, min: 1_000 },
    default_retries: { type: "int", default: 2, min: 0, max: 100 },
  },
  worker: {
    master: { type: "string", default: "http://127.0.0.1:7070" },
    name: { type: "string", default: "" },
    channels: { type: "list", default: ["default"] },
    arch: { type: "string", default: "" },
    capacity: { type: "int", default: 2, min: 1, max: 1024 },
    join: { type: "string", default: "" },
    runner: { type: "enum", default: "process", values: ["process", "sandbox"] },
  },
} as const satisfies Record<string, Record<string, KeySpec>>;

type Schema = typeof SCHEMA;
type ValueOf<K> = K extends { type: infer T } ? ValueOfType<T> : never;
type ValueOfType<T> = T extends "int" | "duration" | "size"
  ? number
  : T extends "bool"
    ? boolean
    : T extends "list"
      ? string[]
      : string;

/** The resolved config: every section and key present and typed. */
export type Config = { [S in keyof Schema]: { -readonly [K in keyof Schema[S]]: ValueOf<Schema[S][K]> } };

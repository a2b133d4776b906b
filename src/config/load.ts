import { readFileSync } from "node:fs";
import { parse as parseToml } from "smol-toml";
import { parseDuration } from "../lib/duration.ts";
import { AppError } from "../lib/errors.ts";
import { isName } from "../lib/names.ts";
import { parseSize } from "../lib/size.ts";
import { type Config, type KeySpec, SCHEMA, type SlotConfig } from "./schema.ts";

export type Overrides = Partial<{ [S in keyof Config]: Partial<Config[S]> }>;

/** Where a value typed on the command line comes from, as error messages name it. */
const COMMAND_LINE = "command line";

class ConfigError extends AppError {
  constructor(message: string) {
    // A bad flag is a usage error (exit 2) like any other; a bad file or environment is a config error.
    super(message.startsWith(`${COMMAND_LINE}:`) ? "USAGE" : "CONFIG_INVALID", message);
  }
}

/** Converts one raw value (from TOML, env or a flag) to the key's type, or throws naming key and origin. */
function coerce(where: string, key: string, spec: KeySpec, raw: unknown): unknown {
  const fail = (what: string): never => {
    throw new ConfigError(`${where}: ${key} ${what}`);
  };
  const text = typeof raw === "string" ? raw.trim() : undefined;
  switch (spec.type) {
    case "string":
      if (typeof raw !== "string") fail(`must be a string, got ${JSON.stringify(raw)}`);
      return raw;
    case "int": {
      const n =
        typeof raw === "number"
          ? raw
          : text !== undefined && /^-?\d+$/.test(text)
            ? Number(text)
            : Number.NaN;
      if (!Number.isInteger(n)) fail(`must be an integer, got ${JSON.stringify(raw)}`);
      if (spec.min !== undefined && n < spec.min) fail(`must be at least ${spec.min}, got ${n}`);
      if (spec.max !== undefined && n > spec.max) fail(`must be at most ${spec.max}, got ${n}`);
      return n;
    }
    case "bool":
      if (typeof raw === "boolean") return raw;
      if (text === "true" || text === "1") return true;
      if (text === "false" || text === "0") return false;
      return fail(`must be true or false, got ${JSON.stringify(raw)}`);
    case "duration":
    case "size": {
      if (typeof raw !== "string" && typeof raw !== "number")
        fail(`must be a string like "30s", got ${JSON.stringify(raw)}`);
      let n = 0;
      try {
        n = spec.type === "duration" ? parseDuration(String(raw)) : parseSize(String(raw));
      } catch (err) {
        fail((err as Error).message);
      }
      if (spec.min !== undefined && n < spec.min) fail(`is too small (minimum ${spec.min})`);
      return n;
    }
    case "list": {
      const items = Array.isArray(raw) ? raw : text !== undefined ? text.split(",") : fail("must be a list");
      const out = (items as unknown[]).map((v) =>
        typeof v === "string" ? v.trim() : fail("must be a list of strings"),
      );
      return out.filter((v) => v !== "");
    }
    case "enum":
      if (typeof raw !== "string" || !spec.values!.includes(raw))
        fail(`must be one of ${spec.values!.join(", ")}, got ${JSON.stringify(raw)}`);
      return raw;
    case "slots":
      return coerceSlots(where, key, raw);
    case "listen": {
      const m = typeof raw === "string" ? /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(raw) : null;
      if (!m || Number(m[2]) > 65535)
        fail(`must be HOST:PORT, like 127.0.0.1:7070, got ${JSON.stringify(raw)}`);
      return raw;
    }
  }
}

const SLOT_KEYS = ["name", "resources", "devices", "groups", "memory", "cpus", "pids", "health_check"];

/** Checks `[[worker.slots]]` entries: known keys only, valid names, unique, sizes and numbers parsed. */
function coerceSlots(where: string, key: string, raw: unknown): SlotConfig[] {
  if (!Array.isArray(raw))
    throw new ConfigError(`${where}: ${key} must be an array of [[worker.slots]] tables`);
  const seen = new Set<string>();
  return raw.map((entry, i) => {
    const at = `${key}[${i}]`;
    const fail = (what: string): never => {
      throw new ConfigError(`${where}: ${at} ${what}`);
    };
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) fail("must be a table");
    const e = entry as Record<string, unknown>;
    for (const k of Object.keys(e))
      if (!SLOT_KEYS.includes(k)) fail(`has an unknown key ${k} (known: ${SLOT_KEYS.join(", ")})`);
    const name = e.name;
    if (typeof name !== "string" || !isName(name))
      fail("needs a name of lowercase letters, digits, '.', '_' or '-'");
    if (seen.has(name as string)) fail(`repeats the slot name ${name}`);
    seen.add(name as string);
    const strings = (k: string, check?: (v: string) => boolean): string[] => {
      const v = e[k] ?? [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== "string" || (check && !check(x))))
        fail(`${k} must be a list of ${k === "devices" ? "absolute /dev paths" : "names"}`);
      return v as string[];
    };
    const num = (k: string, parse: (x: unknown) => number): number | null => {
      if (e[k] === undefined) return null;
      try {
        return parse(e[k]);
      } catch (err) {
        return fail(`${k}: ${(err as Error).message}`);
      }
    };
    return {
      name: name as string,
      resources: strings("resources", isName),
      devices: strings("devices", (d) => /^\/dev\/[A-Za-z0-9/_.:-]+$/.test(d) && !d.includes("..")),
      groups: strings("groups", (g) => /^[a-z_][a-z0-9_-]*$|^\d+$/.test(g)),
      memory: num("memory", (x) => parseSize(String(x))),
      cpus: num("cpus", (x) => {
        const n = Number(x);
        if (!(n > 0)) throw new Error("must be a positive number");
        return n;
      }),
      pids: num("pids", (x) => {
        if (!Number.isInteger(x) || (x as number) < 8) throw new Error("must be an integer of at least 8");
        return x as number;
      }),
      health_check:
        typeof e.health_check === "string"
          ? e.health_check
          : e.health_check === undefined
            ? ""
            : fail("health_check must be a string"),
    };
  });
}

function defaults(): Config {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [section, keys] of Object.entries(SCHEMA)) {
    out[section] = {};
    for (const [key, spec] of Object.entries(keys)) {
      const d = (spec as KeySpec).default;
      out[section][key] = Array.isArray(d) ? [...d] : d;
    }
  }
  return out as Config;
}

/** Applies a parsed TOML document to `cfg`, refusing unknown sections, unknown keys and wrong types. */
export function applyToml(cfg: Config, doc: Record<string, unknown>, file: string) {
  const target = cfg as unknown as Record<string, Record<string, unknown>>;
  for (const [section, body] of Object.entries(doc)) {
    const keys = (SCHEMA as Record<string, Record<string, KeySpec>>)[section];
    if (!keys)
      throw new ConfigError(
        `${file}: unknown section [${section}] (known: ${Object.keys(SCHEMA).join(", ")})`,
      );
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      throw new ConfigError(`${file}: ${section} must be a [${section}] table`);
    }
    for (const [key, raw] of Object.entries(body)) {
      const spec = keys[key];
      if (!spec)
        throw new ConfigError(
          `${file}: unknown key ${section}.${key} (known: ${Object.keys(keys).join(", ")})`,
        );
      target[section]![key] = coerce(file, `${section}.${key}`, spec, raw);
    }
  }
}

/** Applies KILN_<SECTION>_<KEY> variables; an unknown KILN_<SECTION>_* variable is an error like an unknown key. */
export function applyEnv(cfg: Config, env: Record<string, string | undefined>) {
  const target = cfg as unknown as Record<string, Record<string, unknown>>;
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("KILN_") || value === undefined) continue;
    const rest = name.slice(5).toLowerCase();
    const section = Object.keys(SCHEMA).find((s) => rest.startsWith(`${s}_`));
    if (!section) continue; // KILN_URL, KILN_TOKEN and friends belong to the client.
    const key = rest.slice(section.length + 1);
    const spec = (SCHEMA as Record<string, Record<string, KeySpec>>)[section]![key];
    if (!spec) throw new ConfigError(`environment: unknown variable ${name} (no key ${section}.${key})`);
    target[section]![key] = coerce("environment", name, spec, value);
  }
}

/**
 * Loads the config once: defaults < TOML file < KILN_* environment < flags. Flags arrive already parsed
 * as strings and are checked with the same rules.
 */
export function loadConfig(
  opts: { file?: string; env?: Record<string, string | undefined>; flags?: Overrides } = {},
): Config {
  const cfg = defaults();
  if (opts.file) {
    let text: string;
    try {
      text = readFileSync(opts.file, "utf8");
    } catch (err) {
      throw new ConfigError(`cannot read config file ${opts.file}: ${(err as Error).message}`);
    }
    let doc: Record<string, unknown>;
    try {
      doc = parseToml(text) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`${opts.file} is not valid TOML: ${(err as Error).message.split("\n")[0]}`);
    }
    applyToml(cfg, doc, opts.file);
  }
  applyEnv(cfg, opts.env ?? process.env);
  const target = cfg as unknown as Record<string, Record<string, unknown>>;
  for (const [section, keys] of Object.entries(opts.flags ?? {})) {
    for (const [key, raw] of Object.entries(keys ?? {})) {
      if (raw === undefined) continue;
      const spec = (SCHEMA as Record<string, Record<string, KeySpec>>)[section]![key]!;
      // The flag as the user typed it: the log keys are --log-format and --log-level.
      const flag = `--${section === "log" ? "log-" : ""}${key.replaceAll("_", "-")}`;
      target[section]![key] = coerce(COMMAND_LINE, flag, spec, raw);
    }
  }
  return cfg;
}

import type { ArgsDef } from "citty";
import { AppError } from "../lib/errors.ts";
import { type Client, createClient } from "./client.ts";

/** Flags every client command takes. */
export const clientArgs = {
  url: {
    type: "string",
    description: "Master URL (env KILN_URL; default http://127.0.0.1:7070)",
    valueHint: "URL",
  },
  token: {
    type: "string",
    description: "API token (env KILN_TOKEN; default DATA/admin.token on the master's host)",
    valueHint: "TOKEN",
  },
  data: {
    type: "string",
    description: "Data dir whose admin.token (and tls/ca.crt) to use",
    valueHint: "DIR",
  },
  ca: {
    type: "string",
    description: "Verify an https:// master against this CA certificate (env KILN_CA)",
    valueHint: "FILE",
  },
  "ca-fingerprint": {
    type: "string",
    description: "Verify an https:// master's CA by its SHA-256 (env KILN_CA)",
    valueHint: "SHA256",
  },
  insecure: { type: "boolean", description: "Do not verify an https:// master's certificate (unsafe)" },
  json: { type: "boolean", description: "Print one JSON value instead of text" },
} as const satisfies ArgsDef;

const kebab = (s: string) => s.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/**
 * Refuses flags the command does not define (citty accepts anything), so a typo is an error that names
 * it rather than a silently ignored option.
 */
export function checkFlags(ctx: { rawArgs: string[]; cmd: { meta?: unknown } }, args: ArgsDef) {
  const known = new Set<string>(["help", "h"]);
  for (const [name, def] of Object.entries(args)) {
    known.add(name);
    known.add(kebab(name));
    const alias = (def as { alias?: string | string[] }).alias;
    for (const a of Array.isArray(alias) ? alias : alias ? [alias] : []) known.add(a);
    if ((def as { type?: string }).type === "boolean") known.add(`no-${kebab(name)}`);
  }
  for (const raw of ctx.rawArgs) {
    if (raw === "--") break;
    if (!raw.startsWith("-") || raw === "-" || /^-\d/.test(raw)) continue;
    const name = raw.replace(/^--?/, "").split("=")[0]!;
    const names = raw.startsWith("--") ? [name] : name.split("");
    for (const n of names) {
      const cmd = (ctx.cmd.meta as { name?: string } | undefined)?.name ?? "";
      if (!known.has(n))
        throw new AppError(
          "USAGE",
          `unknown flag ${raw.startsWith("--") ? "--" : "-"}${n}: see \`kiln ${cmd} --help\``,
        );
    }
  }
}

/** A client of the master named by --url, --token and --data, else by the environment and defaults. */
export function clientOf(args: {
  url?: string;
  token?: string;
  data?: string;
  ca?: string;
  "ca-fingerprint"?: string;
  insecure?: boolean;
}): Client {
  return createClient({
    url: args.url,
    token: args.token,
    data: args.data,
    ca: args.ca,
    caFingerprint: args["ca-fingerprint"],
    insecure: args.insecure,
  });
}

/** Prints `value` as JSON when --json was given, else the human text. */
export function print(json: boolean | undefined, value: unknown, human: () => string) {
  if (json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else {
    const text = human();
    if (text) process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
  }
}

/**
 * `text` made safe for a terminal: control characters (C0, DEL, C1; newlines and escapes included) are
 * shown as `\n`, `\t` or `\xNN`, so a name a client chose cannot recolour the terminal, move the cursor
 * or break a table into extra lines. Everything else, backslashes included, is shown as it is.
 */
export function safe(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => {
    if (c === "\n") return "\\n";
    if (c === "\t") return "\\t";
    if (c === "\r") return "\\r";
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`;
  });
}

/** Lays out rows as aligned columns; every cell is made terminal-safe. */
export function table(head: string[], rows: (string | number | null)[][]): string {
  const cells = [head, ...rows.map((r) => r.map((c) => (c === null ? "-" : safe(String(c)))))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells
    .map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  "))
    .join("\n");
}

/** The whole number a flag was given (`--pids 100`), undefined if it was not, or a usage error naming it. */
export function intArg(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw new AppError("USAGE", `--${flag} ${v}: must be a whole number`);
  return Number(v);
}

/** Parses a positional job id or throws a usage error. */
export function jobIdArg(text: string | undefined): number {
  if (!text) throw new AppError("USAGE", "a job id is required: see `kiln jobs`");
  if (!/^\d{1,15}$/.test(text))
    throw new AppError("USAGE", `"${text}" is not a job id: job ids are numbers, see \`kiln jobs\``);
  return Number(text);
}

/**
 * Every value of a repeatable string flag, in order (`--env A=1 --env B=2`, `--env=A=1`). citty parses with
 * node:util parseArgs without `multiple`, which keeps only the last one, so these are read from the raw
 * arguments, up to `--`.
 */
export function repeated(rawArgs: string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawArgs.length; i++) {
    const arg = rawArgs[i]!;
    if (arg === "--") break;
    if (arg === `--${flag}` && i + 1 < rawArgs.length) out.push(rawArgs[++i]!);
    else if (arg.startsWith(`--${flag}=`)) out.push(arg.slice(flag.length + 3));
  }
  return out;
}

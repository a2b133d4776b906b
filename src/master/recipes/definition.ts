import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import { parseDuration } from "../../lib/duration.ts";
import { AppError } from "../../lib/errors.ts";
import { parseSize } from "../../lib/size.ts";
import { SPEC_LIMITS, type SubmitOptions, SubmitOptionsSchema } from "../../protocol/job.ts";
import { scanScript } from "./shell.ts";

/*
 * The recipe file format (documented for operators in appliance/recipes/README.md). A recipe is checked
 * completely when it is added, so a submit can only fail on the values it brings: every key is known,
 * every pattern compiles, every placeholder is declared and every default satisfies its own pattern.
 */

/** One declared variable. An optional variable without a default gets "" (which its pattern must allow). */
export interface RecipeVar {
  required: boolean;
  default: string | null;
  pattern: string | null;
  description: string | null;
}

/** A validated recipe: what the store keeps as JSON and what submits are rendered from. */
export interface RecipeDefinition {
  description: string;
  script: string;
  /**
   * Run before the script, as root with the build capabilities, on the job's writable overlay of its
   * template root (see appliance/recipes/README.md "Setup"); null for none. Absent in recipes stored
   * before setups existed.
   */
  setup?: string | null;
  vars: Record<string, RecipeVar>;
  /** Default submit options in API units (bytes, milliseconds); a request's own options win. */
  submit: SubmitOptions;
}

/** Variable names: what a shell identifier allows, lower-case so `KILN_VAR_<NAME>` is one-to-one. */
export const VAR_NAME = /^[a-z_][a-z0-9_]*$/;

// A value travels in the environment; Linux refuses any one env string over 128 KiB (MAX_ARG_STRLEN),
// and a variable that large is a file, not a parameter.
export const MAX_VALUE = 32 * 1024;

const text = (max: number) => z.string().max(max);
const size = z.union([z.string(), z.number().int()]);

const VarSchema = z.strictObject({
  required: z.boolean().optional(),
  default: z.string().max(MAX_VALUE).optional(),
  pattern: text(1000).optional(),
  description: text(1000).optional(),
});

const SubmitTableSchema = z.strictObject({
  project: z.string().optional(),
  channel: z.string().optional(),
  arch: z.string().optional(),
  root: z.string().optional(),
  memory: size.optional(),
  cpus: z.number().optional(),
  pids: z.number().int().optional(),
  scratch: size.optional(),
  timeout: z.string().optional(),
  repo: z.string().optional(),
  use_repos: z.array(z.string()).optional(),
  egress: z.array(z.string()).optional(),
  needs: z.array(z.string()).optional(),
  priority: z.number().int().optional(),
  retries: z.number().int().optional(),
  env: z.record(z.string(), z.string()).optional(),
});

const FileSchema = z.strictObject({
  description: text(500).optional(),
  script: text(1 << 20).min(1, "must not be empty"),
  setup: text(1 << 20)
    .min(1, "must not be empty")
    .refine((s) => Buffer.byteLength(s) <= SPEC_LIMITS.stringBytes, {
      message: `must be at most ${SPEC_LIMITS.stringBytes} bytes (it is one argument of the job's launcher)`,
    })
    .optional(),
  vars: z.record(z.string(), VarSchema).optional(),
  submit: SubmitTableSchema.optional(),
});

/** A 400 whose message names the file and says what to do, on one line. */
export const invalid = (file: string, message: string) =>
  new AppError("RECIPE_INVALID", `${file}: ${message}`, { status: 400 });

/**
 * Compiles a variable's pattern (a JavaScript regular expression); it must match the whole value, as if
 * written between ^ and $, so a pattern without anchors cannot let extra text through.
 */
export function compilePattern(pattern: string): RegExp {
  // Compiling the pattern on its own first makes a syntax error quote what the operator wrote.
  new RegExp(pattern);
  return new RegExp(`^(?:${pattern})$`);
}

function valueAt(raw: unknown, path: PropertyKey[]): unknown {
  let v = raw;
  for (const k of path)
    v = v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[k] : undefined;
  return v;
}

function zodProblem(file: string, raw: unknown, error: z.ZodError): AppError {
  // An unknown key is reported first: a misspelt `script` is better named as the typo than as missing.
  const issue = error.issues.find((i) => i.code === "unrecognized_keys") ?? error.issues[0]!;
  const where = issue.path.join(".");
  if (issue.code === "unrecognized_keys") {
    const key = [where, issue.keys[0]].filter(Boolean).join(".");
    const table =
      issue.path[0] === "vars" ? VarSchema : issue.path[0] === "submit" ? SubmitTableSchema : FileSchema;
    const place = issue.path.length ? `[${where}]` : "the top level";
    return invalid(file, `unknown key "${key}": ${place} takes ${Object.keys(table.shape).join(", ")}`);
  }
  if (issue.code === "invalid_type" && valueAt(raw, issue.path) === undefined) {
    return invalid(file, `"${where}" is missing: a recipe needs a script`);
  }
  if (issue.code === "invalid_type" && issue.expected === "string") {
    return invalid(file, `"${where}" must be a string: put the value in quotes`);
  }
  return invalid(file, `"${where}": ${issue.message}`);
}

/** Parses and checks a recipe file's text; throws a RECIPE_INVALID AppError naming `file` and the key. */
export function parseRecipe(source: string, file: string): RecipeDefinition {
  let raw: unknown;
  try {
    raw = parseToml(source);
  } catch (err) {
    if (!(err instanceof TomlError)) throw err;
    const first = err.message.split("\n")[0]!.replace(/^Invalid TOML document: /, "");
    throw invalid(file, `line ${err.line}, column ${err.column}: ${first} (the file must be TOML)`);
  }
  const parsed = FileSchema.safeParse(raw);
  if (!parsed.success) throw zodProblem(file, raw, parsed.error);
  const doc = parsed.data;

  const vars: Record<string, RecipeVar> = {};
  for (const [name, v] of Object.entries(doc.vars ?? {})) {
    if (!VAR_NAME.test(name)) {
      throw invalid(
        file,
        `variable name "${name}": use lower-case letters, digits and _, not starting with a digit`,
      );
    }
    if (v.required && v.default !== undefined) {
      throw invalid(file, `vars.${name}: a required variable has no default; drop one of the two`);
    }
    let re: RegExp | null = null;
    if (v.pattern !== undefined) {
      try {
        re = compilePattern(v.pattern);
      } catch (err) {
        throw invalid(file, `vars.${name}.pattern does not compile: ${(err as Error).message}`);
      }
    }
    const fallback = v.default ?? "";
    if (!v.required && re && !re.test(fallback)) {
      throw invalid(
        file,
        `vars.${name}: the default ${JSON.stringify(fallback)} does not match its own pattern; fix the default${v.default === undefined ? ", give one" : ""} or set required = true`,
      );
    }
    if (fallback.includes("\0")) throw invalid(file, `vars.${name}.default must not contain a NUL byte`);
    vars[name] = {
      required: v.required ?? false,
      default: v.default ?? null,
      pattern: v.pattern ?? null,
      description: v.description ?? null,
    };
  }

  checkPlaceholders(file, "script", doc.script, vars);
  if (doc.setup !== undefined) checkPlaceholders(file, "setup", doc.setup, vars);

  const submit = submitOptions(file, doc.submit ?? {});
  if (doc.setup !== undefined && submit.root === "host") {
    throw invalid(
      file,
      "a recipe with a setup runs on a template (the host root is never writable): set submit.root to a template, or leave it out and submit with --root",
    );
  }
  return {
    description: doc.description ?? "",
    script: doc.script,
    setup: doc.setup ?? null,
    vars,
    submit,
  };
}

/** Refuses a `{{name}}` in `text` (the script or the setup) that is undeclared or where sh would misuse it. */
function checkPlaceholders(file: string, what: string, text: string, vars: Record<string, RecipeVar>) {
  for (const p of scanScript(text)) {
    if (!(p.name in vars)) {
      throw invalid(
        file,
        `the ${what} uses {{${p.name}}} on line ${p.line} but declares no [vars.${p.name}]`,
      );
    }
    if (p.context === "arith") {
      throw invalid(
        file,
        `{{${p.name}}} on line ${p.line} of the ${what} is inside $((...)), where sh would evaluate the value as an expression: copy it to a shell variable first (${p.name}={{${p.name}}}) and check that it is a number`,
      );
    }
    if (p.context === "single" || p.context === "quoted-heredoc") {
      const where = p.context === "single" ? "inside single quotes" : "in a quoted here-document";
      throw invalid(
        file,
        `{{${p.name}}} on line ${p.line} of the ${what} is ${where}, where sh expands nothing: move it outside the quotes (it is substituted as a quoted expansion)`,
      );
    }
  }
}

/** Turns the `[submit]` table into API options and checks them by the same rules as a submit request. */
function submitOptions(file: string, t: z.infer<typeof SubmitTableSchema>): SubmitOptions {
  const convert = <T>(key: string, value: T | undefined, fn: (v: T) => number): number | undefined => {
    if (value === undefined) return undefined;
    try {
      return fn(value);
    } catch (err) {
      throw invalid(file, `submit.${key}: ${(err as Error).message}`);
    }
  };
  const bytes = (v: string | number) => (typeof v === "number" ? v : parseSize(v));
  const options = {
    project: t.project,
    channel: t.channel,
    arch: t.arch,
    root: t.root,
    memoryBytes: convert("memory", t.memory, bytes),
    cpus: t.cpus,
    pids: t.pids,
    scratchBytes: convert("scratch", t.scratch, bytes),
    timeoutMs: convert("timeout", t.timeout, parseDuration),
    repo: t.repo,
    useRepos: t.use_repos,
    egress: t.egress,
    needs: t.needs,
    priority: t.priority,
    retries: t.retries,
    env: t.env,
  };
  const checked = SubmitOptionsSchema.safeParse(JSON.parse(JSON.stringify(options)));
  if (!checked.success) {
    const issue = checked.error.issues[0]!;
    const key = KEY_OF[String(issue.path[0])] ?? String(issue.path[0]);
    throw invalid(file, `submit.${[key, ...issue.path.slice(1)].join(".")}: ${issue.message}`);
  }
  for (const k of Object.keys(checked.data.env ?? {})) {
    if (k.startsWith("KILN_")) throw invalid(file, `submit.env.${k}: names starting KILN_ are Kiln's own`);
  }
  return checked.data;
}

// The API's option names back to the recipe file's keys, for error messages.
const KEY_OF: Record<string, string> = {
  memoryBytes: "memory",
  scratchBytes: "scratch",
  timeoutMs: "timeout",
  useRepos: "use_repos",
};

import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { formatDuration } from "../lib/duration.ts";
import { AppError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { checkFlags, clientArgs, clientOf, print, table } from "./common.ts";

/** A recipe version as GET /api/v1/recipes/NAME gives it. */
interface RecipeJson {
  name: string;
  version: number;
  description: string;
  vars: Record<
    string,
    { required: boolean; default: string | null; pattern: string | null; description: string | null }
  >;
  submit: Record<string, unknown>;
  script: string;
  setup: string | null;
  createdAt: string;
  createdBy: string | null;
  deletedAt: string | null;
}

const nameArg = { type: "positional", description: "Recipe name", required: false } as const;

function recipeName(name: string | undefined): string {
  if (!name) throw new AppError("USAGE", "a recipe name is required: see `kiln recipe ls`");
  return name;
}

const addArgs = {
  ...clientArgs,
  name: nameArg,
  file: { type: "string", description: "The recipe's TOML file", valueHint: "F" },
} as const;

const add = defineCommand({
  meta: { name: "add", description: "Add a recipe from a TOML file; an existing name gets a new version" },
  args: addArgs,
  async run(ctx) {
    checkFlags(ctx, addArgs);
    const name = recipeName(ctx.args.name);
    if (!ctx.args.file) throw new AppError("USAGE", "--file F is required: the recipe's TOML file");
    let source: string;
    try {
      source = readFileSync(ctx.args.file, "utf8");
    } catch (err) {
      throw new AppError("USAGE", `--file ${ctx.args.file}: ${(err as Error).message}`);
    }
    const r = await clientOf(ctx.args).request<RecipeJson>("POST", "/api/v1/recipes", {
      name,
      source,
      file: ctx.args.file,
    });
    print(ctx.args.json, { name: r.name, version: r.version }, () => `recipe ${r.name} v${r.version} added`);
  },
});

const ls = defineCommand({
  meta: { name: "ls", description: "List recipes: name, latest version, description" },
  args: clientArgs,
  async run(ctx) {
    checkFlags(ctx, clientArgs);
    const rows = await clientOf(ctx.args).request<{ name: string; version: number; description: string }[]>(
      "GET",
      "/api/v1/recipes",
    );
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? "no recipes: add one with `kiln recipe add NAME --file F`"
        : table(
            ["NAME", "VERSION", "DESCRIPTION"],
            rows.map((r) => [r.name, r.version, r.description]),
          ),
    );
  },
});

const showArgs = {
  ...clientArgs,
  name: nameArg,
  version: { type: "string", description: "Show this version (default: the current one)", valueHint: "N" },
} as const;

const show = defineCommand({
  meta: { name: "show", description: "Show a recipe: description, variables, defaults, script" },
  args: showArgs,
  async run(ctx) {
    checkFlags(ctx, showArgs);
    const name = recipeName(ctx.args.name);
    const v = ctx.args.version;
    if (v !== undefined && !/^[1-9]\d{0,8}$/.test(v))
      throw new AppError("USAGE", `--version ${v}: use a version number, 1 or more`);
    const path = `/api/v1/recipes/${encodeURIComponent(name)}${v ? `?version=${v}` : ""}`;
    const r = await clientOf(ctx.args).request<RecipeJson>("GET", path);
    print(ctx.args.json, r, () => describe(r));
  },
});

/** The human form of a recipe version. */
function describe(r: RecipeJson): string {
  const out = [`recipe:      ${r.name} v${r.version}${r.deletedAt ? ` (removed ${r.deletedAt})` : ""}`];
  if (r.description) out.push(`description: ${r.description}`);
  out.push(`added:       ${r.createdAt}${r.createdBy ? ` by ${r.createdBy}` : ""}`);
  const vars = Object.entries(r.vars);
  out.push("", vars.length ? "variables:" : "variables:   none");
  for (const [k, d] of vars) {
    const parts = [d.required ? "required" : `default ${JSON.stringify(d.default ?? "")}`];
    if (d.pattern !== null) parts.push(`pattern ${d.pattern}`);
    out.push(`  ${k}: ${parts.join(", ")}${d.description ? ` - ${d.description}` : ""}`);
  }
  const submit = submitText(r.submit);
  if (submit.length) out.push("", "submit defaults:", ...submit.map((s) => `  ${s}`));
  const block = (title: string, text: string) => [
    "",
    title,
    ...text
      .replace(/\n$/, "")
      .split("\n")
      .map((l) => `  ${l}`),
  ];
  if (r.setup) out.push(...block("setup (as root on the job's writable root, before the script):", r.setup));
  out.push(...block("script:", r.script));
  return out.join("\n");
}

function submitText(s: Record<string, unknown>): string[] {
  return Object.entries(s).map(([k, v]) => {
    if (k === "memoryBytes" || k === "scratchBytes")
      return `${k.replace("Bytes", "")}: ${formatSize(v as number)}`;
    if (k === "timeoutMs") return `timeout: ${formatDuration(v as number)}`;
    if (k === "useRepos") return `use_repos: ${(v as string[]).join(", ")}`;
    if (k === "env") {
      const env = Object.entries(v as Record<string, string>).map(([ek, ev]) => `${ek}=${ev}`);
      return `env: ${env.join(" ")}`;
    }
    return `${k}: ${Array.isArray(v) ? v.join(", ") : String(v)}`;
  });
}

const rmArgs = { ...clientArgs, name: nameArg } as const;

const rm = defineCommand({
  meta: { name: "rm", description: "Remove a recipe from use; jobs that ran it keep their version" },
  args: rmArgs,
  async run(ctx) {
    checkFlags(ctx, rmArgs);
    const name = recipeName(ctx.args.name);
    const res = await clientOf(ctx.args).request("DELETE", `/api/v1/recipes/${encodeURIComponent(name)}`);
    print(ctx.args.json, res, () => `recipe ${name} removed`);
  },
});

export const recipe = defineCommand({
  meta: { name: "recipe", description: "Parameterized job definitions: kiln submit --recipe NAME --var k=v" },
  subCommands: { add, ls, show, rm },
});

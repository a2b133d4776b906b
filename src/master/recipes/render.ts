import { badRequest } from "../../lib/errors.ts";
import { compilePattern, MAX_VALUE, type RecipeDefinition } from "./definition.ts";
import { envName, substitute } from "./shell.ts";

/** A recipe turned into a job: the command to run, the variables' environment and the values used. */
export interface RenderedRecipe {
  command: string[];
  /** The recipe's setup with its placeholders substituted as in the script, or null. */
  setup: string | null;
  /** `KILN_VAR_<NAME>` for every declared variable, defaults included. */
  env: Record<string, string>;
  /** Every declared variable's value, defaults included; what `kiln show` prints. */
  vars: Record<string, string>;
}

const quote = (v: string) => JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);

/**
 * Checks the submitted values against the recipe's variables and renders the job. Throws a 400 (before
 * anything is queued) for an unknown variable, a missing required one, or a value its pattern refuses.
 * The values appear only in the environment; the script text depends on the recipe alone.
 */
export function renderRecipe(
  name: string,
  def: RecipeDefinition,
  given: Record<string, string>,
): RenderedRecipe {
  const declared = Object.keys(def.vars);
  for (const key of Object.keys(given)) {
    if (!(key in def.vars)) {
      const known = declared.length ? `its variables are ${declared.join(", ")}` : "it has no variables";
      throw badRequest(
        `recipe ${name} has no variable "${key}": ${known} (see \`kiln recipe show ${name}\`)`,
        "RECIPE_VAR_UNKNOWN",
      );
    }
  }
  const vars: Record<string, string> = {};
  const env: Record<string, string> = {};
  for (const [key, v] of Object.entries(def.vars)) {
    const value = given[key] ?? v.default ?? (v.required ? undefined : "");
    if (value === undefined) {
      throw badRequest(
        `recipe ${name} needs --var ${key}=VALUE${v.description ? ` (${v.description})` : ""}`,
        "RECIPE_VAR_MISSING",
      );
    }
    if (key in given) {
      if (value.length > MAX_VALUE) {
        throw badRequest(
          `--var ${key}: the value is over ${MAX_VALUE} bytes; pass a file or URL instead`,
          "RECIPE_VAR_INVALID",
        );
      }
      // The environment cannot carry a NUL byte (execve(2) takes C strings).
      if (value.includes("\0"))
        throw badRequest(`--var ${key}: the value contains a NUL byte`, "RECIPE_VAR_INVALID");
      if (v.pattern !== null && !compilePattern(v.pattern).test(value)) {
        throw badRequest(
          `--var ${key}=${quote(value)} does not match the pattern ${v.pattern}${v.description ? ` (${v.description})` : ""}`,
          "RECIPE_VAR_INVALID",
        );
      }
    }
    vars[key] = value;
    env[envName(key)] = value;
  }
  // $0 names the recipe, so the shell's own error messages say where they come from.
  return {
    command: ["/bin/sh", "-ec", substitute(def.script), `recipe:${name}`],
    setup: def.setup ? substitute(def.setup) : null,
    env,
    vars,
  };
}

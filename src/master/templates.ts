import { AppError } from "../lib/errors.ts";
import { type TemplateRecipe, type TemplateSpec, templateHash } from "../protocol/template.ts";
import type { Db } from "../store/open.ts";
import { getTemplate } from "../store/templates.ts";

/** The recipe's base template name, for kinds that build on one. */
export const baseOf = (r: TemplateRecipe): string | null => (r.kind === "script" ? r.base : null);

/**
 * Resolves a template name into the spec a worker builds from: its recipe and its base chain, with the
 * hash recomputed from the chain so a base changed since is a different tree. Throws 404 when a name in
 * the chain is missing and 400 on a cycle.
 */
export async function resolveTemplate(db: Db, name: string, seen: string[] = []): Promise<TemplateSpec> {
  if (seen.includes(name)) {
    throw new AppError("TEMPLATE_CYCLE", `template ${[...seen, name].join(" -> ")} builds on itself`);
  }
  const row = await getTemplate(db, name);
  if (!row) {
    throw new AppError("TEMPLATE_NOT_FOUND", `no template ${name}: list them with \`kiln template ls\``, {
      status: 404,
    });
  }
  const recipe = row.recipe as TemplateRecipe;
  const baseName = baseOf(recipe);
  const base = baseName ? await resolveTemplate(db, baseName, [...seen, name]) : null;
  return { name, hash: templateHash(recipe, base?.hash ?? null), recipe, base };
}

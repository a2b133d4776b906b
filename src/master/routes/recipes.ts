import { Hono } from "hono";
import { AppError, badRequest } from "../../lib/errors.ts";
import { checkName } from "../../lib/names.ts";
import { RecipesApi } from "../../protocol/api.ts";
import { addRecipe, currentRecipe, listRecipes, recipeVersion, removeRecipe } from "../../store/recipes.ts";
import type { RecipeRow } from "../../store/schema.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { audit } from "../audit.ts";
import type { MasterContext } from "../context.ts";
import { parseRecipe, type RecipeDefinition } from "../recipes/definition.ts";
import { jsonBody } from "./json-body.ts";

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The API shape of one recipe version. */
export function recipeView(row: RecipeRow) {
  const def = row.definition as RecipeDefinition;
  return {
    name: row.name,
    version: row.version,
    description: row.description,
    vars: def.vars,
    submit: def.submit,
    script: def.script,
    setup: def.setup ?? null,
    source: row.source,
    createdAt: iso(row.createdAt)!,
    createdBy: row.createdBy,
    deletedAt: iso(row.deletedAt),
  };
}

const noRecipe = (name: string) =>
  new AppError("RECIPE_NOT_FOUND", `no recipe ${name}: list them with \`kiln recipe ls\``, { status: 404 });

/** Recipes: operators add and remove them, viewers read them; submitters run them through POST /jobs. */
export function recipeRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  const reader = guard({ who: "client", role: "viewer", scope: "shared" });
  const operator = guard({ who: "client", role: "operator", scope: "global" });

  app.get("/recipes", reader, async (c) => {
    const rows = await listRecipes(ctx.store.db);
    return c.json(
      rows.map((r) => ({
        name: r.name,
        version: r.version,
        description: r.description,
        createdAt: iso(r.createdAt),
        createdBy: r.createdBy,
      })),
    );
  });

  app.post("/recipes", operator, async (c) => {
    const caller = c.var.caller;
    const req = await jsonBody(c, RecipesApi.add, RecipesApi.maxBytes);
    const name = req.name;
    const def = parseRecipe(req.source, req.file ?? `recipe ${name}`);
    const row = await addRecipe(ctx.store, {
      name,
      description: def.description,
      source: req.source,
      definition: def,
      createdBy: caller.name,
    });
    await audit(ctx, caller, "recipe.add", `recipe/${name}`, { version: row.version });
    return c.json(recipeView(row), 201);
  });

  app.get("/recipes/:name", reader, async (c) => {
    const name = checkName("recipe", c.req.param("name"));
    const v = c.req.query("version");
    if (v === undefined) {
      const row = await currentRecipe(ctx.store.db, name);
      if (!row) throw noRecipe(name);
      return c.json(recipeView(row));
    }
    if (!/^[1-9]\d{0,8}$/.test(v)) throw badRequest(`version ${v}: use a version number, 1 or more`);
    const row = await recipeVersion(ctx.store.db, name, Number(v));
    if (!row) {
      throw new AppError("RECIPE_NOT_FOUND", `recipe ${name} has no version ${v}`, { status: 404 });
    }
    return c.json(recipeView(row));
  });

  app.delete("/recipes/:name", operator, async (c) => {
    const name = checkName("recipe", c.req.param("name"));
    const versions = await removeRecipe(ctx.store, name);
    if (versions === 0) throw noRecipe(name);
    await audit(ctx, c.var.caller, "recipe.rm", `recipe/${name}`);
    return c.json({ name, removed: true });
  });

  return app;
}

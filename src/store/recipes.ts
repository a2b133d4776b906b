import { and, asc, desc, eq, isNull, sql } from "drizzle-orm";
import type { Db, Store } from "./open.ts";
import { type RecipeRow, recipes } from "./schema.ts";

/*
 * Recipe versions are never changed or deleted: adding a recipe under an existing name appends version
 * N+1, and removing one only stamps deleted_at on its versions. Jobs keep (recipe, recipe_version), so
 * every job can always be traced to the exact text it ran, whatever happened to the recipe since.
 */

/** A recipe version to store: its name, the TOML source as given and the definition parsed from it. */
export interface NewRecipe {
  name: string;
  description: string;
  source: string;
  definition: unknown;
  createdBy: string | null;
}

/**
 * Stores `r` as the next version of its name (1 for a new name, also after a removal: version numbers
 * never repeat) and returns the row. The version is chosen inside the write transaction, and the primary
 * key (name, version) refuses a duplicate should two masters share one database.
 */
export function addRecipe(store: Store, r: NewRecipe, now = Date.now()): Promise<RecipeRow> {
  return store.write(async (tx) => {
    const [top] = await tx
      .select({ v: sql<number | null>`max(${recipes.version})` })
      .from(recipes)
      .where(eq(recipes.name, r.name));
    const [row] = await tx
      .insert(recipes)
      .values({ ...r, version: Number(top?.v ?? 0) + 1, createdAt: now })
      .returning();
    return row!;
  });
}

/** The version new submits use: the newest version of `name`, unless the recipe was removed. */
export async function currentRecipe(db: Db, name: string): Promise<RecipeRow | undefined> {
  const [row] = await db
    .select()
    .from(recipes)
    .where(eq(recipes.name, name))
    .orderBy(desc(recipes.version))
    .limit(1);
  return row && row.deletedAt === null ? row : undefined;
}

/** One version of `name`, removed or not (old jobs still refer to it). */
export async function recipeVersion(db: Db, name: string, version: number): Promise<RecipeRow | undefined> {
  const [row] = await db
    .select()
    .from(recipes)
    .where(and(eq(recipes.name, name), eq(recipes.version, version)));
  return row;
}

/** The current version of every recipe in use, by name. */
export function listRecipes(db: Db): Promise<RecipeRow[]> {
  const newest = sql`(SELECT max(v.version) FROM ${recipes} AS v WHERE v.name = ${recipes.name})`;
  return db
    .select()
    .from(recipes)
    .where(and(isNull(recipes.deletedAt), eq(recipes.version, newest)))
    .orderBy(asc(recipes.name));
}

/** Takes `name` out of use (new submits are refused); returns how many versions it marked, 0 if it was not in use. */
export function removeRecipe(store: Store, name: string, now = Date.now()): Promise<number> {
  return store.write(async (tx) => {
    const rows = await tx
      .update(recipes)
      .set({ deletedAt: now })
      .where(and(eq(recipes.name, name), isNull(recipes.deletedAt)))
      .returning({ version: recipes.version });
    return rows.length;
  });
}

import { eq } from "drizzle-orm";
import type { TemplateRecipe } from "../protocol/template.ts";
import type { Db, Store } from "./open.ts";
import { type TemplateRow, templates } from "./schema.ts";

/** Creates or replaces the template `name`; returns the stored row. */
export function putTemplate(
  store: Store,
  t: { name: string; hash: string; recipe: TemplateRecipe; base: string | null; createdBy: string },
  now = Date.now(),
): Promise<TemplateRow> {
  return store.write(async (tx) => {
    const [row] = await tx
      .insert(templates)
      .values({ ...t, createdAt: now, updatedAt: now })
      .onConflictDoUpdate({
        target: templates.name,
        set: { hash: t.hash, recipe: t.recipe, base: t.base, updatedAt: now },
      })
      .returning();
    return row!;
  });
}

/** The template named `name`, or undefined. */
export async function getTemplate(db: Db, name: string): Promise<TemplateRow | undefined> {
  return (await db.select().from(templates).where(eq(templates.name, name)))[0];
}

/** Every template, by name. */
export function listTemplates(db: Db) {
  return db.select().from(templates).orderBy(templates.name);
}

/** Removes template `name` and returns its row, or null when there was none. */
export function deleteTemplate(store: Store, name: string) {
  return store.write(
    async (tx) => (await tx.delete(templates).where(eq(templates.name, name)).returning())[0] ?? null,
  );
}

/** Templates built on top of `name` (they keep it from being removed). */
export async function dependents(db: Db, name: string): Promise<string[]> {
  return (await db.select({ name: templates.name }).from(templates).where(eq(templates.base, name))).map(
    (r) => r.name,
  );
}

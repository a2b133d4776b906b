import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { getJob, insertJob } from "./jobs.ts";
import { openStore, type Store } from "./open.ts";
import {
  addRecipe,
  currentRecipe,
  listRecipes,
  type NewRecipe,
  recipeVersion,
  removeRecipe,
} from "./recipes.ts";

let dir: string;
let store: Store;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-store-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const recipe = (name: string, description = "d"): NewRecipe => ({
  name,
  description,
  source: `description = "${description}"\nscript = "true"\n`,
  definition: { description, script: "true", vars: {}, submit: {} },
  createdBy: "admin",
});

test("adding a recipe under an existing name makes the next version and keeps the old ones", async () => {
  expect((await addRecipe(store, recipe("build", "one"))).version).toBe(1);
  expect((await addRecipe(store, recipe("build", "two"))).version).toBe(2);
  expect((await addRecipe(store, recipe("other"))).version).toBe(1);
  expect((await currentRecipe(store.db, "build"))?.description).toBe("two");
  expect((await recipeVersion(store.db, "build", 1))?.description).toBe("one");
  expect((await listRecipes(store.db)).map((r) => [r.name, r.version])).toEqual([
    ["build", 2],
    ["other", 1],
  ]);
});

test("versions added at the same time get distinct numbers", async () => {
  const rows = await Promise.all([1, 2, 3, 4].map(() => addRecipe(store, recipe("race"))));
  expect(rows.map((r) => r.version).sort()).toEqual([1, 2, 3, 4]);
});

test("removing a recipe hides it from use but keeps every version readable", async () => {
  await addRecipe(store, recipe("build", "one"));
  await addRecipe(store, recipe("build", "two"));
  expect(await removeRecipe(store, "build")).toBe(2);
  expect(await removeRecipe(store, "build")).toBe(0);
  expect(await currentRecipe(store.db, "build")).toBeUndefined();
  expect(await listRecipes(store.db)).toEqual([]);
  const old = await recipeVersion(store.db, "build", 2);
  expect(old?.description).toBe("two");
  expect(old?.deletedAt).not.toBeNull();
  // Adding it again continues the numbering, so (name, version) never means two different texts.
  expect((await addRecipe(store, recipe("build", "three"))).version).toBe(3);
  expect((await currentRecipe(store.db, "build"))?.version).toBe(3);
});

test("a job keeps the recipe version and values it was rendered with", async () => {
  await addRecipe(store, recipe("build"));
  const row = await insertJob(store, {
    name: "build v1",
    project: "default",
    channel: "default",
    command: ["/bin/sh", "-ec", `echo "\${KILN_VAR_A}"`],
    env: { KILN_VAR_A: "x" },
    timeoutMs: 1000,
    needs: [],
    egress: [],
    retries: 0,
    recipe: "build",
    recipeVersion: 1,
    recipeVars: { a: "x" },
  });
  const back = await getJob(store.db, row.id);
  expect([back?.recipe, back?.recipeVersion, back?.recipeVars]).toEqual(["build", 1, { a: "x" }]);
});

import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

/*
 * Every export of the shared and master-side folders says what it guarantees, in a comment right above
 * it (STYLE.md, "Comments"). log.ts and loop.ts are left to their own owner for now; the migrations
 * module is generated.
 */

const SRC = join(import.meta.dir, "..", "src");
const FOLDERS = ["master", "store", "protocol", "lib"];
const EXEMPT = new Set(["lib/log.ts", "lib/loop.ts", "store/migrations.gen.ts"]);

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? files(join(dir, e.name))
      : e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")
        ? [join(dir, e.name)]
        : [],
  );
}

test("every export in master, store, protocol and lib has a contract comment right above it", () => {
  const bare: string[] = [];
  for (const folder of FOLDERS)
    for (const file of files(join(SRC, folder))) {
      const rel = relative(SRC, file);
      if (EXEMPT.has(rel)) continue;
      const lines = readFileSync(file, "utf8").split("\n");
      lines.forEach((line, i) => {
        if (!/^export\s+(async\s+)?(function|const|let|interface|type|class|enum)\b/.test(line)) return;
        const above = lines[i - 1] ?? "";
        if (!/\*\/\s*$/.test(above) && !/^\s*\/\//.test(above))
          bare.push(`${rel}:${i + 1}: ${line.slice(0, 80)}`);
      });
    }
  expect(bare, "say in a sentence what each of these guarantees").toEqual([]);
});

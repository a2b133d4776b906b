import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const SRC = join(import.meta.dir, "..", "src");

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

const importsOf = (file: string) =>
  [...readFileSync(file, "utf8").matchAll(/from\s+"(\.[^"]+)"|import\("(\.[^"]+)"\)/g)].map((m) =>
    join(file, "..", m[1] ?? m[2]!),
  );

test("master and worker never import each other; protocol, config and lib import neither", () => {
  const bad: string[] = [];
  for (const f of files(SRC)) {
    const area = relative(SRC, f).split("/")[0];
    for (const target of importsOf(f)) {
      const to = relative(SRC, target).split("/")[0];
      if ((area === "master" && to === "worker") || (area === "worker" && to === "master"))
        bad.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
      if (["protocol", "config", "lib", "store"].includes(area!) && ["master", "worker", "cli"].includes(to!))
        bad.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
    }
  }
  expect(bad).toEqual([]);
});

import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

/*
 * Which part of src/ may import which: the table is the architecture. master and worker never import
 * each other; the sandbox does not import the worker (both use the runner contract and the job API);
 * the CLI never touches the store; the shared parts import no role. `..` is the build output the
 * sandbox embeds (dist/kiln-sandbox) and package.json for the version.
 */
const MAY_IMPORT: Record<string, string[]> = {
  "main.ts": ["cli", "lib", "version.ts"],
  "version.ts": [".."],
  cli: ["config", "lib", "protocol", "master", "worker", "sandbox"],
  config: ["lib"],
  lib: [],
  protocol: ["lib"],
  store: ["lib", "protocol"],
  templates: ["lib", "protocol"],
  runner: ["config", "lib", "protocol", "templates"],
  "job-api": ["lib", "protocol", "runner"],
  master: ["config", "lib", "protocol", "store", "version.ts"],
  worker: ["config", "lib", "protocol", "runner", "job-api", "version.ts"],
  sandbox: ["config", "lib", "protocol", "runner", "job-api", "templates", ".."],
  types: [],
};

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

test("every part of src/ imports only what the table allows (tests aside)", () => {
  const bad: string[] = [];
  for (const f of files(SRC)) {
    if (f.endsWith(".test.ts")) continue;
    const area = relative(SRC, f).split("/")[0]!;
    const allowed = MAY_IMPORT[area];
    if (!allowed) {
      bad.push(`${relative(SRC, f)}: ${area} is not in the table`);
      continue;
    }
    for (const target of importsOf(f)) {
      const to = relative(SRC, target).split("/")[0]!;
      if (to !== area && !allowed.includes(to)) bad.push(`${relative(SRC, f)} -> ${relative(SRC, target)}`);
    }
  }
  expect(bad).toEqual([]);
});

test("the table forbids what the architecture forbids", () => {
  const may = (from: string, to: string) => MAY_IMPORT[from]!.includes(to);
  expect([
    may("master", "worker"),
    may("worker", "master"),
    may("sandbox", "worker"),
    may("cli", "store"),
  ]).toEqual([false, false, false, false]);
  for (const shared of ["protocol", "config", "lib", "store", "runner", "job-api"])
    for (const role of ["master", "worker", "cli"])
      expect([shared, role, may(shared, role)]).toEqual([shared, role, false]);
});

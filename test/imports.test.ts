import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

/*
 * Which part of src/ may import which: the table is the architecture. master and worker never import
 * each other; the sandbox does not import the worker (both use the runner contract and the job API);
 * the CLI never touches the store; the shared parts import no role. Outside src/ only package.json (for
 * the version) may be imported, never the build output in dist/: the launcher the sandbox embeds is
 * generated into src/sandbox/gen/ by scripts/build.
 */
const MAY_IMPORT: Record<string, string[]> = {
  "main.ts": ["cli", "lib", "version.ts"],
  "version.ts": ["../package.json"],
  cli: ["config", "lib", "protocol", "master", "worker", "sandbox", "tls"],
  config: ["lib"],
  lib: [],
  protocol: ["lib"],
  store: ["lib", "protocol"],
  repo: ["lib", "protocol"],
  templates: ["lib", "protocol"],
  runner: ["config", "lib", "protocol", "templates"],
  "job-api": ["lib", "protocol", "runner"],
  storage: ["config", "lib"],
  master: ["config", "lib", "protocol", "store", "storage", "repo", "tls", "version.ts"],
  worker: ["config", "lib", "protocol", "runner", "job-api", "tls", "version.ts"],
  sandbox: ["config", "lib", "protocol", "runner", "job-api", "templates"],
  tls: ["lib"],
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

// The first folder or file under src/; outside src/, the file or folder under the checkout's root.
const areaOf = (path: string) => {
  const parts = path.split("/");
  return parts[0] === ".." ? `../${parts[1]}` : parts[0]!;
};

test("every part of src/ imports only what the table allows (tests aside)", () => {
  const bad: string[] = [];
  for (const f of files(SRC)) {
    if (f.endsWith(".test.ts")) continue;
    const area = areaOf(relative(SRC, f));
    const allowed = MAY_IMPORT[area];
    if (!allowed) {
      bad.push(`${relative(SRC, f)}: ${area} is not in the table`);
      continue;
    }
    for (const target of importsOf(f)) {
      const to = areaOf(relative(SRC, target));
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
  // dist/ is output: a source importing it would build only after a build, and embed a stale file.
  for (const area of Object.keys(MAY_IMPORT)) expect([area, may(area, "../dist")]).toEqual([area, false]);
  for (const shared of ["protocol", "config", "lib", "store", "storage", "runner", "job-api", "tls"])
    for (const role of ["master", "worker", "cli"])
      expect([shared, role, may(shared, role)]).toEqual([shared, role, false]);
});

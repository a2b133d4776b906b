import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { parseRecipe } from "./definition.ts";
import { renderRecipe } from "./render.ts";

const DIR = join(import.meta.dir, "..", "..", "..", "appliance", "recipes");
const files = readdirSync(DIR).filter((f) => f.endsWith(".toml"));

test("the shipped examples are all there", () => {
  expect(files.sort()).toEqual(["debian-package.toml", "disk-image.toml", "git-ci.toml"]);
});

test.each(files)("appliance/recipes/%s passes the validator and renders with its required values", (file) => {
  const def = parseRecipe(readFileSync(join(DIR, file), "utf8"), file);
  expect(def.description).not.toBe("");
  const given: Record<string, string> = {};
  const samples: Record<string, string> = {
    url: "https://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3.dsc",
    repo: "https://example.org/x.git",
  };
  for (const [name, v] of Object.entries(def.vars)) if (v.required) given[name] = samples[name] ?? "x";
  const r = renderRecipe(file, def, given);
  expect(r.command[2]).not.toContain("{{");
  // The rendered script must at least parse: sh -n reads it without running anything.
  const check = Bun.spawnSync(["/bin/sh", "-n", "-c", r.command[2]!]);
  expect(check.stderr.toString()).toBe("");
  expect(check.exitCode).toBe(0);
});

test("git-ci refuses refs and repository URLs that could be read as options or commands", () => {
  const def = parseRecipe(readFileSync(join(DIR, "git-ci.toml"), "utf8"), "git-ci.toml");
  const repo = "https://example.org/x.git";
  for (const ref of ["main", "v1.2.3", "release/2.x", "0123abcd", "HEAD"])
    expect(() => renderRecipe("git-ci", def, { repo, ref })).not.toThrow();
  for (const ref of ["--upload-pack=x", "a..b", "a@{1}", "a b", "-x", ""])
    expect(() => renderRecipe("git-ci", def, { repo, ref })).toThrow(/does not match/);
  for (const bad of ["ext::sh -c id", "-oProxyCommand=x", "host:path.git"])
    expect(() => renderRecipe("git-ci", def, { repo: bad })).toThrow(/does not match/);
});

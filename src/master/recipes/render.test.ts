import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AppError } from "../../lib/errors.ts";
import { parseRecipe } from "./definition.ts";
import { renderRecipe } from "./render.ts";

const def = parseRecipe(
  `
script = """
printf '[%s]\\n' {{msg}}
printf '[%s]\\n' "quoted {{msg}}"
cat <<EOF
[{{msg}}]
EOF
printf '[%s]\\n' {{dist}}
"""
[vars.msg]
required = true
[vars.dist]
default = "bookworm"
pattern = "^[a-z]+$"
description = "a codename"
`,
  "t.toml",
);

function refusal(given: Record<string, string>): AppError {
  try {
    renderRecipe("t", def, given);
  } catch (err) {
    return err as AppError;
  }
  throw new Error("the values were accepted");
}

describe("renderRecipe", () => {
  test("values go to the environment and the script text does not depend on them", () => {
    const a = renderRecipe("t", def, { msg: "one" });
    const b = renderRecipe("t", def, { msg: "two", dist: "trixie" });
    expect(a.command).toEqual(b.command);
    expect(a.command.slice(0, 2)).toEqual(["/bin/sh", "-ec"]);
    expect(a.env).toEqual({ KILN_VAR_MSG: "one", KILN_VAR_DIST: "bookworm" });
    expect(b.vars).toEqual({ msg: "two", dist: "trixie" });
  });

  test("a setup's placeholders are substituted as the script's, and a value in it runs nothing", () => {
    const withSetup = parseRecipe(
      `script = "true"\nsetup = "printf '[%s]' {{msg}}"\n[vars.msg]\nrequired = true`,
      "s.toml",
    );
    const dir = mkdtempSync(join(tmpdir(), "kiln-render-"));
    try {
      const marker = join(dir, "pwned");
      const r = renderRecipe("s", withSetup, { msg: `$(touch ${marker})` });
      expect(r.setup).toBe(`printf '[%s]' "\${KILN_VAR_MSG}"`);
      const p = Bun.spawnSync(["/bin/sh", "-ec", r.setup!], {
        env: { PATH: "/usr/bin:/bin", ...r.env },
        cwd: dir,
      });
      expect(p.stdout.toString()).toBe(`[$(touch ${marker})]`);
      expect(existsSync(marker)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    expect(renderRecipe("t", def, { msg: "x" }).setup).toBeNull();
  });

  test("an injection attempt comes out literally and runs nothing", () => {
    const dir = mkdtempSync(join(tmpdir(), "kiln-render-"));
    try {
      const marker = join(dir, "pwned");
      const evil = `$(touch ${marker}); \`touch ${marker}\` "; touch ${marker} #' *`;
      const r = renderRecipe("t", def, { msg: evil });
      const p = Bun.spawnSync(r.command, { env: { PATH: "/usr/bin:/bin", ...r.env }, cwd: dir });
      expect(p.exitCode).toBe(0);
      expect(p.stdout.toString()).toBe(`[${evil}]\n[quoted ${evil}]\n[${evil}]\n[bookworm]\n`);
      expect(existsSync(marker)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("an unknown variable is refused and the known ones are listed", () => {
    const e = refusal({ msg: "x", nope: "1" });
    expect([e.status, e.code]).toEqual([400, "RECIPE_VAR_UNKNOWN"]);
    expect(e.message).toBe(
      'recipe t has no variable "nope": its variables are msg, dist (see `kiln recipe show t`)',
    );
  });

  test("a missing required variable is refused", () => {
    const e = refusal({});
    expect([e.status, e.code]).toEqual([400, "RECIPE_VAR_MISSING"]);
    expect(e.message).toBe("recipe t needs --var msg=VALUE");
  });

  test("a value that fails its pattern is refused with the pattern and the description", () => {
    const e = refusal({ msg: "x", dist: "Bookworm; id" });
    expect([e.status, e.code]).toEqual([400, "RECIPE_VAR_INVALID"]);
    expect(e.message).toBe('--var dist="Bookworm; id" does not match the pattern ^[a-z]+$ (a codename)');
  });

  test("a pattern must match the whole value", () => {
    const loose = parseRecipe(
      `script = "echo {{a}}"\n[vars.a]\nrequired = true\npattern = "[a-z]+"`,
      "l.toml",
    );
    expect(() => renderRecipe("l", loose, { a: "abc" })).not.toThrow();
    expect(() => renderRecipe("l", loose, { a: "abc def" })).toThrow(/does not match/);
  });

  test("a NUL byte cannot travel in the environment and is refused", () => {
    expect(refusal({ msg: "a\0b" }).message).toContain("NUL");
  });
});

import { describe, expect, test } from "bun:test";
import { AppError } from "../../lib/errors.ts";
import { parseRecipe } from "./definition.ts";

const GOOD = `
description = "Build a thing"
script = """
set -e
fetch {{url}} "{{dist}}"
"""
[vars.url]
required = true
pattern = "^https?://[^ ]+$"
description = "where"
[vars.dist]
default = "bookworm"
pattern = "[a-z]+"
[submit]
root = "bookworm-build"
memory = "2G"
cpus = 2
pids = 512
scratch = "4G"
timeout = "1h"
egress = ["deb.debian.org"]
needs = []
priority = 3
retries = 1
env = { DEBIAN_FRONTEND = "noninteractive" }
`;

/** The one-line message parseRecipe refuses `source` with. */
function refusal(source: string): string {
  try {
    parseRecipe(source, "r.toml");
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).status).toBe(400);
    expect((err as AppError).message).not.toContain("\n");
    return (err as AppError).message;
  }
  throw new Error("the recipe was accepted");
}

describe("parseRecipe", () => {
  test("a valid recipe keeps its variables in order and its submit options in API units", () => {
    const def = parseRecipe(GOOD, "r.toml");
    expect(def.description).toBe("Build a thing");
    expect(Object.keys(def.vars)).toEqual(["url", "dist"]);
    expect(def.vars.url).toEqual({
      required: true,
      default: null,
      pattern: "^https?://[^ ]+$",
      description: "where",
    });
    expect(def.vars.dist!.default).toBe("bookworm");
    expect(def.submit).toEqual({
      root: "bookworm-build",
      memoryBytes: 2 * 1024 ** 3,
      cpus: 2,
      pids: 512,
      scratchBytes: 4 * 1024 ** 3,
      timeoutMs: 3_600_000,
      egress: ["deb.debian.org"],
      needs: [],
      priority: 3,
      retries: 1,
      env: { DEBIAN_FRONTEND: "noninteractive" },
    });
  });

  test("an unknown key is refused naming the file, the key and the keys allowed there", () => {
    expect(refusal(`script = "x"\nscripts = "y"`)).toBe(
      'r.toml: unknown key "scripts": the top level takes description, script, setup, vars, submit',
    );
    expect(refusal(`script = "x"\n[vars.a]\nrequird = true`)).toContain(
      'r.toml: unknown key "vars.a.requird": [vars.a] takes required, default, pattern, description',
    );
    expect(refusal(`script = "x"\n[submit]\nmem = "1G"`)).toContain('unknown key "submit.mem"');
  });

  test("a file that is not TOML is refused with the line and column", () => {
    expect(refusal('script = "x\ny = 1')).toMatch(/^r\.toml: line 1, column \d+: .*the file must be TOML/);
  });

  test("a missing script and a wrongly typed value are refused", () => {
    expect(refusal('description = "x"')).toContain('"script" is missing');
    expect(refusal(`script = "x"\n[vars.a]\ndefault = 2`)).toContain('"vars.a.default" must be a string');
  });

  test("a pattern that does not compile is refused", () => {
    expect(refusal(`script = "x"\n[vars.a]\nrequired = true\npattern = "[a-"`)).toMatch(
      /^r\.toml: vars\.a\.pattern does not compile: /,
    );
  });

  test("every placeholder must be declared", () => {
    expect(refusal(`script = "echo {{nope}}"`)).toBe(
      "r.toml: the script uses {{nope}} on line 1 but declares no [vars.nope]",
    );
    expect(refusal(`script = "echo {{URL}}"\n[vars.url]\nrequired = true`)).toContain("{{URL}}");
  });

  test("variable names must be lower-case identifiers", () => {
    expect(refusal(`script = "x"\n[vars.Url]\nrequired = true`)).toContain('variable name "Url"');
    expect(refusal(`script = "x"\n[vars.1a]\nrequired = true`)).toContain('variable name "1a"');
  });

  test("a default must satisfy its own pattern, the implicit empty default included", () => {
    expect(refusal(`script = "x"\n[vars.d]\ndefault = "Bad"\npattern = "^[a-z]+$"`)).toContain(
      'vars.d: the default "Bad" does not match its own pattern',
    );
    expect(refusal(`script = "x"\n[vars.d]\npattern = "^[a-z]+$"`)).toContain(
      "give one or set required = true",
    );
    expect(refusal(`script = "x"\n[vars.d]\nrequired = true\ndefault = "a"`)).toContain("drop one");
  });

  test("a placeholder inside single quotes, a quoted here-document or arithmetic is refused", () => {
    const vars = "\n[vars.a]\nrequired = true";
    expect(refusal(`script = "echo '{{a}}'"${vars}`)).toContain("inside single quotes");
    expect(refusal(`script = """\ncat <<'E'\n{{a}}\nE\n"""${vars}`)).toContain("in a quoted here-document");
    expect(refusal(`script = "echo $(( {{a}} + 1 ))"${vars}`)).toContain("is inside $((...))");
  });

  test("a setup is checked like the script, and is refused on the host root", () => {
    const vars = "\n[vars.a]\nrequired = true";
    const ok = parseRecipe(`script = "make"\nsetup = "apt-get install -y {{a}}"${vars}`, "r.toml");
    expect(ok.setup).toBe("apt-get install -y {{a}}");
    expect(parseRecipe(`script = "make"`, "r.toml").setup).toBeNull();
    expect(refusal(`script = "x"\nsetup = "echo {{nope}}"`)).toBe(
      "r.toml: the setup uses {{nope}} on line 1 but declares no [vars.nope]",
    );
    expect(refusal(`script = "x"\nsetup = "echo '{{a}}'"${vars}`)).toContain(
      "of the setup is inside single quotes",
    );
    expect(refusal(`script = "x"\nsetup = ""`)).toContain('"setup": must not be empty');
    expect(refusal(`script = "x"\nsetup = "true"\n[submit]\nroot = "host"`)).toContain(
      "a recipe with a setup runs on a template",
    );
  });

  test("submit options follow the rules of the matching submit flags", () => {
    expect(refusal(`script = "x"\n[submit]\nmemory = "lots"`)).toContain("submit.memory: invalid size");
    expect(refusal(`script = "x"\n[submit]\nmemory = "1M"`)).toContain("submit.memory: must be at least 4M");
    expect(refusal(`script = "x"\n[submit]\ntimeout = "soon"`)).toContain("submit.timeout:");
    expect(refusal(`script = "x"\n[submit]\nchannel = "Bad Name"`)).toContain("submit.channel:");
    expect(refusal(`script = "x"\n[submit]\nenv = { KILN_OUT = "/" }`)).toContain("submit.env.KILN_OUT");
  });

  test("use_repos names the repositories the recipe's jobs install from, each a valid name", () => {
    const def = parseRecipe(`script = "x"\n[submit]\nuse_repos = ["tools", "base"]`, "r.toml");
    expect(def.submit.useRepos).toEqual(["tools", "base"]);
    expect(refusal(`script = "x"\n[submit]\nuse_repos = ["../tools"]`)).toContain("submit.use_repos.0:");
    expect(refusal(`script = "x"\n[submit]\nuse_repos = "tools"`)).toContain("submit.use_repos");
  });
});

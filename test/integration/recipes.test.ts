import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  stopAll,
  tempDir,
  waitFor,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Recipes end to end through the compiled binary: add, submit with values, the refusals that must queue
 * nothing, versions, removal, and the shipped git-ci recipe against a repository made here. The local
 * worker uses the plain-process runner: these tests are about rendering, not isolation.
 */

const SHIPPED = resolve(import.meta.dir, "..", "..", "appliance", "recipes");

const ECHO_V1 = `
description = "print the values it gets"
script = """
printf 'msg=[%s]\\n' {{msg}}
echo "dist=[{{dist}}]"
"""
[vars.msg]
required = true
description = "anything at all"
[vars.dist]
default = "bookworm"
pattern = "^[a-z]+$"
`;

const ECHO_V2 = ECHO_V1.replace("msg=[%s]", "v2 msg=[%s]");

interface ShowJson {
  id: number;
  state: string;
  exitCode: number | null;
  recipe: { name: string; version: number; vars: Record<string, string> } | null;
}

describe("recipes", () => {
  const dir = tempDir();
  let m: Master;
  const file = (name: string, text: string) => {
    const path = join(dir.path, name);
    writeFileSync(path, text);
    return path;
  };
  const jobCount = async () =>
    (JSON.parse((await m.cli(["jobs", "--json", "--limit", "1000"])).stdout) as unknown[]).length;
  const showJson = async (id: number) =>
    JSON.parse((await m.cli(["show", String(id), "--json"])).stdout) as ShowJson;
  let firstJob = 0;

  test("kiln up starts with a local process worker", async () => {
    m = await startMaster(dir.path, {
      role: "up",
      name: "up",
      env: { KILN_WORKER_RUNNER: "process", KILN_WORKER_NAME: "local", KILN_WORKER_CAPACITY: "2" },
    });
    await waitFor(
      "the local worker",
      async () => (await m.api<{ connected: boolean }[]>("GET", "/api/v1/workers")).body[0]?.connected,
    );
  });

  test("recipe add, ls and show", async () => {
    const add = await m.cli(["recipe", "add", "echo", "--file", file("echo.toml", ECHO_V1), "--json"]);
    expect(add.code).toBe(0);
    expect(JSON.parse(add.stdout)).toEqual({ name: "echo", version: 1 });
    const ls = await m.cli(["recipe", "ls"]);
    expect(ls.stdout).toMatch(/^NAME\s+VERSION\s+DESCRIPTION\necho\s+1\s+print the values it gets\n$/);
    const show = await m.cli(["recipe", "show", "echo"]);
    expect(show.stdout).toContain("recipe:      echo v1");
    expect(show.stdout).toContain("  msg: required - anything at all");
    expect(show.stdout).toContain('  dist: default "bookworm", pattern ^[a-z]+$');
    expect(show.stdout).toContain(`  echo "dist=[{{dist}}]"`);
  });

  test("an invalid recipe file is refused on one line naming the file and the key", async () => {
    const bad = file("bad.toml", `${ECHO_V1}\n[submit]\nmemroy = "1G"\n`);
    const r = await m.cli(["recipe", "add", "echo", "--file", bad]);
    expect(r.code).toBe(2);
    expect(r.stderr).toStartWith(`kiln: ${bad}: unknown key "submit.memroy": [submit] takes `);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
  });

  test("values reach the script literally, an injection attempt included", async () => {
    using scratch = tempDir("kiln-canary-");
    const pwned = join(scratch.path, "pwned");
    const canary = join(scratch.path, "canary");
    mkdirSync(canary);
    const evil = `$(touch ${pwned}); rm -rf ${canary} \`touch ${pwned}\` "; id #' *`;
    const r = await m.cli([
      "submit",
      "--recipe",
      "echo",
      "--var",
      `msg=${evil}`,
      "--var",
      "dist=trixie",
      "--wait",
    ]);
    expect(r.stderr).toContain("succeeded");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`msg=[${evil}]\ndist=[trixie]\n`);
    expect(existsSync(pwned)).toBe(false);
    expect(existsSync(canary)).toBe(true);

    const id = Number(/job (\d+) queued/.exec(r.stderr)![1]);
    firstJob = id;
    const view = await showJson(id);
    expect(view.recipe).toEqual({ name: "echo", version: 1, vars: { msg: evil, dist: "trixie" } });
    const text = await m.cli(["show", String(id)]);
    expect(text.stdout).toContain(`recipe:      echo v1 (msg=${JSON.stringify(evil)}, dist=trixie)`);
    const plain = await m.cli(["submit", "--json", "--", "true"]);
    expect((await showJson(JSON.parse(plain.stdout).id)).recipe).toBeNull();
  });

  test("an unknown variable, a missing required one or a value failing its pattern queues nothing", async () => {
    const before = await jobCount();
    const cases: [string[], string][] = [
      [
        ["--var", "msg=x", "--var", "nope=1"],
        'kiln: recipe echo has no variable "nope": its variables are msg, dist',
      ],
      [["--var", "dist=sid"], "kiln: recipe echo needs --var msg=VALUE (anything at all)"],
      [
        ["--var", "msg=x", "--var", "dist=Sid; id"],
        'kiln: --var dist="Sid; id" does not match the pattern ^[a-z]+$',
      ],
    ];
    for (const [vars, message] of cases) {
      const r = await m.cli(["submit", "--recipe", "echo", ...vars]);
      expect(r.code).toBe(2);
      expect(r.stderr).toStartWith(message);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
    const api = await m.api<{ error: { code: string } }>("POST", "/api/v1/jobs", {
      recipe: "echo",
      vars: {},
    });
    expect([api.status, api.body.error.code]).toEqual([400, "RECIPE_VAR_MISSING"]);
    expect(await jobCount()).toBe(before);
  });

  test("a new version is used by new jobs while old jobs keep theirs", async () => {
    const add = await m.cli(["recipe", "add", "echo", "--file", file("echo2.toml", ECHO_V2)]);
    expect(add.stdout).toBe("recipe echo v2 added\n");
    const r = await m.cli(["submit", "--recipe", "echo", "--var", "msg=again", "--wait"]);
    expect(r.stdout).toBe("v2 msg=[again]\ndist=[bookworm]\n");
    expect((await showJson(firstJob)).recipe?.version).toBe(1);
    const old = await m.cli(["recipe", "show", "echo", "--version", "1", "--json"]);
    expect(JSON.parse(old.stdout).script).not.toContain("v2");
    const retry = await m.cli(["retry", String(firstJob), "--json"]);
    const copy = JSON.parse(retry.stdout).id as number;
    await waitFor("the retry to end", async () => (await showJson(copy)).state === "succeeded");
    expect((await showJson(copy)).recipe?.version).toBe(1);
    expect((await m.cli(["logs", String(copy)])).stdout).toStartWith("msg=[");
  });

  test("rm takes a recipe out of use but old jobs and versions stay readable", async () => {
    expect((await m.cli(["recipe", "rm", "echo"])).stdout).toBe("recipe echo removed\n");
    const before = await jobCount();
    const r = await m.cli(["submit", "--recipe", "echo", "--var", "msg=x"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toStartWith("kiln: no recipe echo:");
    expect(await jobCount()).toBe(before);
    expect((await m.cli(["recipe", "ls", "--json"])).stdout.trim()).toBe("[]");
    expect((await showJson(firstJob)).recipe).toMatchObject({ name: "echo", version: 1 });
    const v1 = await m.cli(["recipe", "show", "echo", "--version", "1"]);
    expect(v1.stdout).toContain("(removed ");
  });

  test("the shipped git-ci recipe builds a ref of a local repository", async () => {
    using repo = tempDir("kiln-git-");
    const git = (...args: string[]) => {
      const p = Bun.spawnSync(
        ["git", "-c", "user.name=Kiln Test", "-c", "user.email=test@kiln.invalid", ...args],
        {
          cwd: repo.path,
          env: { PATH: "/usr/bin:/bin", HOME: repo.path, GIT_CONFIG_NOSYSTEM: "1" },
        },
      );
      if (p.exitCode !== 0) throw new Error(`git ${args.join(" ")}: ${p.stderr}`);
      return p.stdout.toString().trim();
    };
    git("init", "--quiet", "--initial-branch=main");
    writeFileSync(
      join(repo.path, "build.sh"),
      'echo "built $(cat version) on $(git rev-parse --abbrev-ref HEAD)"\n',
    );
    writeFileSync(join(repo.path, "version"), "one\n");
    git("add", ".");
    git("commit", "--quiet", "-m", "one");
    git("tag", "v1");
    writeFileSync(join(repo.path, "version"), "two\n");
    git("commit", "--quiet", "-am", "two");
    const head = git("rev-parse", "HEAD");

    const add = await m.cli(["recipe", "add", "git-ci", "--file", join(SHIPPED, "git-ci.toml")]);
    expect(add.code).toBe(0);
    const url = `file://${repo.path}`;
    const tag = await m.cli([
      "submit",
      "--recipe",
      "git-ci",
      "--var",
      `repo=${url}`,
      "--var",
      "ref=v1",
      "--var",
      "command=sh build.sh",
      "--wait",
    ]);
    expect(tag.stderr).toContain("succeeded");
    expect(tag.stdout).toContain("built one on HEAD");
    const main = await m.cli([
      "submit",
      "--recipe",
      "git-ci",
      "--var",
      `repo=${url}`,
      "--var",
      "ref=main",
      "--var",
      "command=sh build.sh",
      "--wait",
    ]);
    expect(main.stdout).toContain(`building main at ${head}`);
    expect(main.stdout).toContain("built two on HEAD");
    const bad = await m.cli([
      "submit",
      "--recipe",
      "git-ci",
      "--var",
      `repo=${url}`,
      "--var",
      "ref=--upload-pack=id",
    ]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("does not match the pattern");
  });

  afterAll(async () => {
    expect(await stopAll()).toBe(1);
    dir[Symbol.dispose]();
  });
});

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { helloSpec } from "../../src/repo/rpm-bench.ts";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";
import { SEED_DIR, saveTemplate, seedTemplate } from "../template-seed.ts";

checkLeftoversAfterEachTest();

/*
 * Jobs that build on what the farm built (`kiln submit --use-repo`), as root, through the compiled binary
 * with the real sandbox: job A builds a .deb with dpkg-deb and publishes it into repository `tools`; job B,
 * on a bookworm template, names `tools` and its recipe's setup installs A's package with the template's
 * own apt-get, through B's API proxy, checking the repository's signature against the key Kiln wrote;
 * B's script then runs what A's package installed. A job that does not name `tools` reaches nothing of
 * it, neither with apt nor by asking the proxy by hand. The rpm side the same way with dnf: Debian's dnf,
 * installed in the job's setup from deb.debian.org (skipped, saying so, when that cannot be reached), reads
 * the .repo file and key Kiln wrote and installs an rpmbuild package from the farm's rpm repository.
 *
 * The template is bookworm minbase with build-essential and fakeroot, shared through test/template-seed.ts
 * with the other suites that build it; without a saved tree the first job builds it (debootstrap from
 * deb.debian.org, minutes).
 */

const root = process.getuid?.() === 0;
if (!root) console.error("use-repo tests skipped: they need root (the sandbox, debootstrap)");

/** Whether Debian's archive answers: the rpm test installs Debian's dnf into its job first. */
async function reachable(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { method: "HEAD", signal: AbortSignal.timeout(20_000) })).ok;
  } catch {
    return false;
  }
}
const debianOnline = root && (await reachable("http://deb.debian.org/debian/dists/bookworm/InRelease"));
if (root && !debianOnline)
  console.error(
    "use-repo: the rpm test is skipped: deb.debian.org (where the job gets dnf) cannot be reached",
  );

const dir = tempDir("kiln-use-repos-test-", "/var/tmp");
let m: Master;
let hash = "";
const log = async (id: number) => (await m.cli(["logs", String(id)])).stdout;

// Job A: kiln-greeting VERSION, a program and the data file it prints, built with dpkg-deb into $KILN_OUT.
const BUILD_DEB = `
v=$1; d=/tmp/pkg
mkdir -p $d/DEBIAN $d/usr/bin $d/usr/share/kiln-greeting
printf 'Package: kiln-greeting\\nVersion: %s\\nArchitecture: amd64\\nMaintainer: Kiln <kiln@example.invalid>\\nDescription: a greeting built by another Kiln job\\n' "$v" > $d/DEBIAN/control
printf 'built by job %s\\n' "$KILN_JOB_ID" > $d/usr/share/kiln-greeting/greeting
printf '#!/bin/sh\\necho "kiln-greeting %s says: $(cat /usr/share/kiln-greeting/greeting)"\\n' "$v" > $d/usr/bin/kiln-greeting
chmod 755 $d/usr/bin/kiln-greeting
dpkg-deb --root-owner-group --build $d "$KILN_OUT/kiln-greeting_\${v}_amd64.deb"
`;

// The setup installs A's package from the repository with nothing but Kiln's source (Debian's own is
// dropped, and the job has no egress); the script uses what it installed, as the slot's user.
const RECIPE = `
description = "install kiln-greeting from the farm's repository and run it"
setup = """
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/debian.sources
apt-get update
apt-get install -y --no-install-recommends kiln-greeting
"""
script = """
kiln-greeting
cat /usr/share/kiln-greeting/greeting
"""

[submit]
root = "bookworm-build"
use_repos = ["tools"]
env = { DEBIAN_FRONTEND = "noninteractive" }
`;

// dnf from Debian's archive in the setup, then the package from Kiln's rpm repository, into the job's root.
const EL_RECIPE = `
description = "install kiln-el-hello with dnf from the farm's rpm repository"
setup = """
apt-get update
apt-get install -y --no-install-recommends dnf
cat /etc/yum.repos.d/kiln-el.repo
dnf -y --releasever=12 --noplugins install kiln-el-hello
"""
script = "kiln-el-hello"

[submit]
root = "bookworm-build"
scratch = "3G"
env = { DEBIAN_FRONTEND = "noninteractive" }
`;

// A bare HTTP GET of the job's API proxy with bash's /dev/tcp: no client in the job resolves the path.
const RAW_GET = `exec 3<>/dev/tcp/127.0.0.1/7070
printf 'GET %s HTTP/1.1\\r\\nHost: kiln\\r\\n\\r\\n' "$1" >&3
cat <&3`;

beforeAll(async () => {
  if (!root) return;
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "r-userepo" },
  });
  for (const args of [
    ["tools", "--type", "deb", "--dist", "bookworm"],
    ["theirs", "--type", "deb", "--project", "other"],
    ["el", "--type", "rpm"],
  ]) {
    const r = await m.cli(["repo", "add", ...args]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
  }
  const add = await m.cli([
    "template",
    "add",
    "bookworm-build",
    "--debootstrap",
    "bookworm",
    "--include",
    "build-essential,fakeroot",
    "--json",
  ]);
  expect(add.code, add.stderr).toBe(0);
  hash = JSON.parse(add.stdout).hash;
  if (seedTemplate(m.data, hash))
    console.error(`use-repos: template ${hash.slice(0, 12)} seeded from ${SEED_DIR}`);
  const recipes = join(dir.path, "recipes");
  mkdirSync(recipes, { recursive: true });
  writeFileSync(join(recipes, "greet.toml"), RECIPE);
  writeFileSync(join(recipes, "greet-alone.toml"), RECIPE.replace('use_repos = ["tools"]\n', ""));
  writeFileSync(join(recipes, "el-install.toml"), EL_RECIPE);
  for (const name of ["greet", "greet-alone", "el-install"]) {
    const r = await m.cli(["recipe", "add", name, "--file", join(recipes, `${name}.toml`)]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
  }
}, 120_000);

afterAll(async () => {
  if (!root) return;
  await stopAll();
  dir[Symbol.dispose]();
});

describe.skipIf(!root)("jobs that use the farm's repositories", () => {
  let built = 0;

  test("a --use-repo that names no repository, or another project's private one, is refused at submit with exit 2", async () => {
    const missing = await m.cli(["submit", "--use-repo", "nosuch", "--", "true"]);
    expect([missing.code, missing.stderr]).toEqual([
      2,
      expect.stringContaining("--use-repo nosuch: no repository nosuch"),
    ]);
    const theirs = await m.cli(["submit", "--use-repo", "tools", "--use-repo", "theirs", "--", "true"]);
    expect([theirs.code, theirs.stderr]).toEqual([
      2,
      expect.stringContaining(
        "--use-repo theirs: no repository theirs that jobs of project default may read",
      ),
    ]);
    const bad = await m.cli(["submit", "--use-repo", "../tools", "--", "true"]);
    expect(bad.code).toBe(2);
    // Nothing was queued.
    expect(JSON.parse((await m.cli(["jobs", "--json"])).stdout)).toEqual([]);
  });

  test("job A's package, published with --repo, installs with apt-get in job B's setup through B's API proxy, and B's script runs it", async () => {
    built = await submitJob(m, { command: ["/bin/sh", "-ec", BUILD_DEB, "build", "1.0-1"], repo: "tools" });
    const a = await waitJob(m, built, 120_000);
    expect([a.state, a.reason]).toEqual(["succeeded", null]);
    expect(await log(built)).toContain("published into repository tools: kiln-greeting 1.0-1 (amd64)");

    const sub = await m.cli(["submit", "--recipe", "greet", "--wait"]);
    const id = Number(/^job (\d+) queued$/m.exec(sub.stderr)?.[1]);
    const out = await log(id);
    expect(sub.code, `${sub.stderr}\n${out.slice(-4000)}`).toBe(0);
    saveTemplate(m.data, hash);
    const setup = out.slice(out.indexOf("--- kiln: setup ---\n"), out.indexOf("--- kiln: job ---\n"));
    expect(setup).toContain(
      "kiln: repository tools (deb) from http://127.0.0.1:7070/repos/tools/: /etc/apt/sources.list.d/kiln-tools.sources, key /etc/apt/keyrings/kiln-tools.asc",
    );
    // apt fetched the signed InRelease through the proxy and checked it: an unsigned or badly signed one
    // fails apt-get update.
    expect(setup).toContain("Get:1 http://127.0.0.1:7070/repos/tools bookworm InRelease");
    expect(setup).toContain("Setting up kiln-greeting (1.0-1)");
    expect(out).toContain(`kiln-greeting 1.0-1 says: built by job ${built}\n`);
    // The setup's install went into B's own overlay: the template's tree has neither the package nor the source.
    const tree = join(m.data, "worker", "templates", hash, "root");
    expect(existsSync(join(tree, "usr/bin/kiln-greeting"))).toBe(false);
    expect(existsSync(join(tree, "etc/apt/sources.list.d/kiln-tools.sources"))).toBe(false);

    const shown = await m.cli(["show", String(id)]);
    expect(shown.stdout).toMatch(/^repos: +uses tools$/m);
    const json = JSON.parse((await m.cli(["show", String(id), "--json"])).stdout);
    expect([json.useRepos, json.resources.writableRoot]).toEqual([["tools"], true]);
    // A retry repeats the job with the repositories it used.
    const retry = await m.cli(["retry", String(id), "--json"]);
    const again = JSON.parse(retry.stdout).id as number;
    const copy = await waitJob(m, again, 300_000);
    expect([copy.state, (copy as unknown as { useRepos: string[] }).useRepos]).toEqual([
      "succeeded",
      ["tools"],
    ]);
  }, 900_000);

  test("a job that does not name the repository cannot install from it, nor read it through its proxy", async () => {
    const sub = await m.cli(["submit", "--recipe", "greet-alone", "--wait"]);
    const id = Number(/^job (\d+) queued$/m.exec(sub.stderr)?.[1]);
    const job = await waitJob(m, id);
    const out = await log(id);
    expect([job.state, job.reason], out.slice(-3000)).toEqual(["failed", "setup"]);
    expect(out).toContain("Unable to locate package kiln-greeting");

    // By hand, on the host root: without --use-repo the proxy has no such repository; with it, the key.
    const plain = await submitJob(m, {
      command: ["/bin/bash", "-c", RAW_GET, "get", "/repos/tools/key.asc"],
    });
    expect((await waitJob(m, plain)).state).toBe("succeeded");
    const refused = await log(plain);
    expect(refused).toMatch(/^HTTP\/1\.1 404 /);
    expect(refused).toContain('"code":"REPO_NOT_USED"');
    const named = await submitJob(m, {
      command: ["/bin/bash", "-c", RAW_GET, "get", "/repos/tools/key.asc"],
      useRepos: ["tools"],
    });
    expect((await waitJob(m, named)).state).toBe("succeeded");
    const key = await log(named);
    expect(key).toMatch(/^HTTP\/1\.1 200 /);
    expect(key).toContain("-----BEGIN PGP PUBLIC KEY BLOCK-----");
    // Climbing out of a named repository into another one is refused by the proxy itself.
    const climb = await submitJob(m, {
      command: ["/bin/bash", "-c", RAW_GET, "get", "/repos/tools/../el/repodata/repomd.xml"],
      useRepos: ["tools"],
    });
    await waitJob(m, climb);
    expect(await log(climb)).toContain('"code":"INVALID_PATH"');
  }, 300_000);

  test.skipIf(!debianOnline)(
    "an rpm package published with --repo installs with dnf in a job's setup from the .repo file Kiln wrote, its metadata checked against the key",
    async () => {
      const spec = helloSpec({
        name: "kiln-el-hello",
        version: "1.0",
        release: "1",
        output: "hello from el",
      });
      const rpm = await submitJob(m, {
        command: [
          "/bin/sh",
          "-ec",
          `mkdir -p /tmp/rpm/SPECS && printf '%s' "$1" > /tmp/rpm/SPECS/k.spec
           rpmbuild -bb --define "_topdir /tmp/rpm" --define "_tmppath /tmp" /tmp/rpm/SPECS/k.spec
           cp /tmp/rpm/RPMS/*/*.rpm "$KILN_OUT/"`,
          "rpmbuild",
          spec,
        ],
        repo: "el",
      });
      expect((await waitJob(m, rpm, 180_000)).state).toBe("succeeded");
      // The template has no dnf: the setup installs Debian's from deb.debian.org (egress), then dnf, as
      // root, reads /etc/yum.repos.d/kiln-el.repo. The job has egress, so http_proxy is set and dnf sends
      // its requests for the repository to the proxy as absolute URLs.
      const sub = await m.cli([
        "submit",
        "--recipe",
        "el-install",
        "--use-repo",
        "el",
        "--egress",
        "deb.debian.org",
        "--wait",
      ]);
      const id = Number(/^job (\d+) queued$/m.exec(sub.stderr)?.[1]);
      const out = await log(id);
      expect(sub.code, `${sub.stderr}\n${out.slice(-4000)}`).toBe(0);
      expect(out).toContain(
        "kiln: repository el (rpm) from http://127.0.0.1:7070/repos/el/: /etc/yum.repos.d/kiln-el.repo, key /etc/pki/rpm-gpg/kiln-el.asc",
      );
      // dnf imported the key the .repo file names before it trusted repomd.xml.
      expect(out).toContain("From       : /etc/pki/rpm-gpg/kiln-el.asc");
      expect(out).toContain("Installed:");
      expect(out).toContain("hello from el\n");
    },
    900_000,
  );
});

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  stopAll,
  tempDir,
  waitJob,
} from "../harness.ts";
import { saveTemplate, seedTemplate } from "../template-seed.ts";

checkLeftoversAfterEachTest();

/*
 * appliance/recipes/debian-package.toml as its header tells a new user to run it, on a fresh `kiln up`: a
 * bookworm minbase template with build-essential and fakeroot, the recipe added from the file, one submit
 * of Debian's real hello_2.10-3 source. The recipe's setup installs devscripts and hello's build
 * dependencies from deb.debian.org on the job's own overlay; the build runs as the slot's user and leaves
 * the .deb files as artifacts, published into the recipe's repository. Needs root (the sandbox, debootstrap) and Debian's archive: it skips,
 * saying so, when deb.debian.org cannot be reached. The template tree is shared with other runs through
 * test/template-seed.ts.
 */

const REPO = resolve(import.meta.dir, "../..");
const DSC = "https://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3.dsc";
const root = process.getuid?.() === 0;

async function reachable(): Promise<boolean> {
  try {
    const res = await fetch(DSC, { method: "HEAD", signal: AbortSignal.timeout(20_000) });
    return res.ok;
  } catch {
    return false;
  }
}
const online = root && (await reachable());
if (!root) console.error("debian-package tests skipped: they need root (debootstrap, the sandbox)");
else if (!online)
  console.error(`debian-package tests skipped: ${DSC} cannot be reached (no network to Debian's archive)`);

/**
 * Whether the CA certificates Debian ships (what the setup installs with ca-certificates) verify
 * deb.debian.org from here. A network that intercepts TLS with a CA of its own, trusted by this host
 * only, fails that check: the test then fetches the same .dsc over http (the recipe's pattern allows it,
 * and dpkg-source still checks every file of the source against the .dsc's checksums), and says so.
 */
function debianTrustsArchive(): boolean {
  const cas = "/usr/share/ca-certificates/mozilla";
  if (!existsSync(cas) || !Bun.which("curl")) return true;
  using tmp = tempDir("kiln-debpkg-ca-", "/var/tmp");
  const bundle = join(tmp.path, "debian-cas.pem");
  writeFileSync(
    bundle,
    readdirSync(cas)
      .map((f) => readFileSync(join(cas, f), "utf8"))
      .join("\n"),
  );
  // A bare environment: no SSL_CERT_DIR or CURL_CA_BUNDLE adding the host's own CAs to the check.
  const r = Bun.spawnSync(
    ["curl", "-sfo", "/dev/null", "--max-time", "20", "--cacert", bundle, "--capath", "/nonexistent", DSC],
    { env: {} },
  );
  return r.exitCode === 0;
}
const url = online && !debianTrustsArchive() ? DSC.replace("https://", "http://") : DSC;
if (online && url !== DSC)
  console.error(
    "debian-package: this network intercepts TLS to deb.debian.org with a CA Debian does not ship; the build fetches the .dsc over http",
  );

const dir = tempDir("kiln-debpkg-test-", "/var/tmp");
let m: Master;
let hash = "";
const log = async (id: number) => (await m.cli(["logs", String(id)])).stdout;

beforeAll(async () => {
  if (!online) return;
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "1", KILN_WORKER_NAME: "c-debpkg" },
  });
});

afterAll(async () => {
  if (!online) return;
  await m.kill("SIGTERM");
  await stopAll();
  dir[Symbol.dispose]();
});

describe.skipIf(!online)("the debian-package recipe", () => {
  test("the template and the recipe are added with the commands of the recipe's header", async () => {
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
    const repo = await m.cli(["repo", "add", "bookworm", "--type", "deb", "--dist", "bookworm"]);
    expect(repo.code, repo.stderr).toBe(0);
    if (seedTemplate(m.data, hash))
      console.error(`debian-package: template ${hash.slice(0, 12)} seeded from a saved tree`);
    const recipe = await m.cli([
      "recipe",
      "add",
      "debian-package",
      "--file",
      join(REPO, "appliance/recipes/debian-package.toml"),
    ]);
    expect(recipe.code, recipe.stderr).toBe(0);
    const show = await m.cli(["recipe", "show", "debian-package"]);
    expect(show.stdout).toContain("setup (as root on the job's writable root, before the script):");
    expect(show.stdout).toContain("apt-get build-dep");
  });

  test("a submit of hello_2.10-3 installs its build dependencies in the setup and succeeds with hello_2.10-3_amd64.deb", async () => {
    const sub = await m.cli(["submit", "--recipe", "debian-package", "--var", `url=${url}`, "--wait"]);
    const id = Number(/^job (\d+) queued$/m.exec(sub.stderr)?.[1]);
    const out = await log(id);
    expect(sub.code, `${sub.stderr}\n${out.slice(-4000)}`).toBe(0);
    const job = await waitJob(m, id);
    expect(job.state).toBe("succeeded");
    saveTemplate(m.data, hash);
    // The setup's output, marked, then the build's as the slot's user.
    const setupAt = out.indexOf("--- kiln: setup ---\n");
    const jobAt = out.indexOf("--- kiln: job ---\n");
    expect(setupAt).toBeGreaterThanOrEqual(0);
    expect(jobAt).toBeGreaterThan(setupAt);
    const setup = out.slice(setupAt, jobAt);
    expect(setup).toContain("Setting up devscripts");
    expect(setup).toMatch(/Setting up debhelper/);
    expect(out.slice(jobAt)).toContain("dpkg-buildpackage: info: binary-only upload");
    const artifacts = (await m.api<{ name: string; kind: string }[]>("GET", `/api/v1/jobs/${id}/artifacts`))
      .body;
    expect(artifacts).toContainEqual(
      expect.objectContaining({ name: "hello_2.10-3_amd64.deb", kind: "deb" }),
    );
    // The template is as it was added: what the setup installed went with the job's scratch.
    const tree = join(m.data, "worker", "templates", hash, "root");
    expect(existsSync(join(tree, "usr/bin/dpkg-buildpackage"))).toBe(true);
    expect(existsSync(join(tree, "usr/bin/dget"))).toBe(false);
    expect(existsSync(join(tree, "usr/bin/dh"))).toBe(false);
    // Published into the recipe's repository.
    const listed = JSON.parse((await m.cli(["repo", "packages", "bookworm", "--json"])).stdout) as {
      name: string;
      version: string;
      arch: string;
    }[];
    expect(listed).toContainEqual(
      expect.objectContaining({ name: "hello", version: "2.10-3", arch: "amd64" }),
    );
    expect((await m.cli(["repo", "packages", "bookworm"])).stdout).toMatch(/^hello\s+2\.10-3\s+amd64/m);
  }, 1_800_000);

  test("the job's timeout covers its setup", async () => {
    const file = join(dir.path, "slow.toml");
    writeFileSync(
      file,
      [
        'setup = """',
        "echo waiting",
        "exec sleep 1000",
        '"""',
        'script = "echo the-command-ran"',
        "[submit]",
        'root = "bookworm-build"',
        'timeout = "10s"',
      ].join("\n"),
    );
    expect((await m.cli(["recipe", "add", "slow", "--file", file])).code).toBe(0);
    const id = JSON.parse((await m.cli(["submit", "--recipe", "slow", "--json"])).stdout).id;
    const job = await waitJob(m, id, 120_000);
    const out = await log(id);
    expect(job.state, out).toBe("timed_out");
    expect(out).toContain("--- kiln: setup ---\nwaiting\n");
    expect(out).not.toContain("the-command-ran");
  }, 180_000);

  test("a failed setup fails the job with reason setup, and its command never runs", async () => {
    const file = join(dir.path, "broken.toml");
    writeFileSync(
      file,
      [
        'setup = """',
        "echo preparing",
        "apt-get install -y no-such-package-kiln",
        '"""',
        'script = "echo the-command-ran"',
        "[submit]",
        'root = "bookworm-build"',
        'egress = ["deb.debian.org"]',
      ].join("\n"),
    );
    expect((await m.cli(["recipe", "add", "broken", "--file", file])).code).toBe(0);
    const sub = await m.cli(["submit", "--recipe", "broken", "--json"]);
    const id = JSON.parse(sub.stdout).id;
    const job = await waitJob(m, id, 600_000);
    const out = await log(id);
    expect(job.state, out).toBe("failed");
    expect(job.reason).toBe("setup");
    expect(job.message).toBe("the setup exited with status 100");
    expect(out).toContain("--- kiln: setup ---\npreparing\n");
    expect(out).toContain("Unable to locate package no-such-package-kiln");
    expect(out).toContain("kiln: the setup exited with status 100; the job's command did not run");
    expect(out).not.toContain("the-command-ran");
    const show = await m.cli(["show", String(id)]);
    expect(show.stdout).toContain("with the recipe's setup");
  }, 600_000);
});

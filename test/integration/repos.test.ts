import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildDeb, controlText } from "../../src/repo/deb-build.ts";
import { helloSpec } from "../../src/repo/rpm-bench.ts";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Package repositories end to end, as root, through the compiled binary with the sandbox runner: a job
 * builds a .deb with dpkg-deb and publishes it with --repo; a fresh debootstrap root that knows only
 * `kiln repo show`'s line and `kiln repo key`'s key installs it with apt-get over loopback and runs it;
 * a newer build replaces it, an older one fails its job with reason `publish`, and `kiln job version`
 * inside a job sees the newest. An rpmbuild package installs with dnf into an installroot. A reader
 * checks every hash of the index while 20 jobs publish, and hostile packages from a job change nothing.
 */

const root = process.getuid?.() === 0;
if (!root) console.error("repository tests skipped: they need root (the sandbox, chroot, dnf --installroot)");

const dir = tempDir("kiln-repos-test-", "/var/tmp");
// A finished minbase root, kept between runs: debootstrap takes a minute, unpacking this a few seconds.
const CACHE = "/var/tmp/kiln-test-cache/bookworm-minbase-root.tar";
let m: Master;

const env = { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", LC_ALL: "C" };

async function run(argv: string[], extra: Record<string, string> = {}) {
  const p = Bun.spawn(argv, { env: { ...env, ...extra }, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { out, err, code };
}

/** A fresh Debian bookworm minbase root at `dest` (from the cache, made by debootstrap the first time). */
async function debianRoot(dest: string) {
  if (!existsSync(CACHE)) {
    const build = join(dir.path, "debootstrap");
    const r = await run([
      "debootstrap",
      "--variant=minbase",
      "bookworm",
      build,
      "http://deb.debian.org/debian",
    ]);
    if (r.code !== 0) throw new Error(`debootstrap failed: ${r.err || r.out}`);
    mkdirSync(join(CACHE, ".."), { recursive: true });
    const tmp = `${CACHE}.${process.pid}`;
    const t = await run(["tar", "-C", build, "-cf", tmp, "."]);
    if (t.code !== 0) throw new Error(`tar failed: ${t.err}`);
    renameSync(tmp, CACHE);
    rmSync(build, { recursive: true, force: true });
  }
  mkdirSync(dest, { recursive: true });
  const x = await run(["tar", "-C", dest, "-xf", CACHE]);
  if (x.code !== 0) throw new Error(`unpacking ${CACHE} failed: ${x.err}`);
}

/** Runs `argv` inside the Debian root (chroot shares this host's loopback, so the master is reachable). */
const inRoot = (rootDir: string, argv: string[]) =>
  run(["chroot", rootDir, ...argv], { DEBIAN_FRONTEND: "noninteractive", HOME: "/root" });

// A job script that builds kiln-hello VERSION with dpkg-deb into $KILN_OUT.
const BUILD_DEB = `
v=$1; d=/tmp/pkg
mkdir -p $d/DEBIAN $d/usr/bin
printf 'Package: %s\\nVersion: %s\\nArchitecture: amd64\\nMaintainer: Kiln <kiln@example.invalid>\\nDescription: a greeting from a Kiln job\\n' "\${2:-kiln-hello}" "$v" > $d/DEBIAN/control
printf '#!/bin/sh\\necho "hello %s from a kiln repository"\\n' "$v" > $d/usr/bin/\${2:-kiln-hello}
chmod 755 $d/usr/bin/\${2:-kiln-hello}
dpkg-deb --root-owner-group --build $d "$KILN_OUT/\${2:-kiln-hello}_\${v}_amd64.deb"
`;

const build = (version: string, extra: Record<string, unknown> = {}, name?: string) =>
  submitJob(m, {
    command: ["/bin/sh", "-ec", BUILD_DEB, "build", version, ...(name ? [name] : [])],
    repo: "debs",
    ...extra,
  });

const log = async (id: number) => (await m.cli(["logs", String(id)])).stdout;

beforeAll(async () => {
  if (!root) return;
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "d-repos" },
  });
  for (const args of [
    ["debs", "--type", "deb", "--dist", "bookworm", "--component", "main", "--arch", "amd64,all", "--public"],
    ["rpms", "--type", "rpm", "--public"],
    ["live", "--type", "deb", "--public", "--keep", "1"],
  ]) {
    const r = await m.cli(["repo", "add", ...args]);
    expect([r.code, r.stderr]).toEqual([0, ""]);
  }
}, 120_000);

afterAll(async () => {
  if (!root) return;
  await stopAll();
  dir[Symbol.dispose]();
});

describe.skipIf(!root)("package repositories", () => {
  const debian = join(dir.path, "debian");

  test("a job's .deb published with --repo installs with apt-get in a fresh Debian root that knows only `kiln repo show` and the key", async () => {
    const [id] = await Promise.all([build("1.0-1"), debianRoot(debian)]);
    const job = await waitJob(m, id, 120_000);
    expect([job.state, job.reason]).toEqual(["succeeded", null]);
    expect(await log(id)).toContain("--- kiln: published into repository debs: kiln-hello 1.0-1 (amd64) ---");

    const shown = JSON.parse((await m.cli(["repo", "show", "debs", "--json"])).stdout);
    expect(shown.usage.sourcesLine).toBe(
      `deb [signed-by=/etc/apt/keyrings/debs.asc] ${m.url}/repos/debs bookworm main`,
    );
    const key = await m.cli(["repo", "key", "debs"]);
    expect(key.stdout).toContain("-----BEGIN PGP PUBLIC KEY BLOCK-----");
    // Nothing but Kiln's repository: Debian's own source goes.
    rmSync(join(debian, "etc/apt/sources.list"), { force: true });
    mkdirSync(join(debian, "etc/apt/keyrings"), { recursive: true });
    writeFileSync(join(debian, "etc/apt/keyrings/debs.asc"), key.stdout, { mode: 0o644 });
    writeFileSync(join(debian, "etc/apt/sources.list.d/debs.list"), `${shown.usage.sourcesLine}\n`);

    const update = await inRoot(debian, ["apt-get", "update"]);
    expect({ code: update.code, err: update.err }).toEqual({ code: 0, err: "" });
    expect(update.out).toContain(`Get:1 ${m.url}/repos/debs bookworm InRelease`);
    // A chroot without /dev/pts: dpkg says it cannot keep its terminal log, which changes nothing.
    const install = await inRoot(debian, ["apt-get", "install", "-y", "kiln-hello"]);
    expect({ code: install.code, out: install.out }).toEqual({
      code: 0,
      out: expect.stringContaining("Setting up kiln-hello (1.0-1)"),
    });
    expect((await inRoot(debian, ["kiln-hello"])).out).toBe("hello 1.0-1 from a kiln repository\n");
  }, 600_000);

  test("a newer build replaces it, an older one fails its job with reason publish, and `kiln job version` sees the newest", async () => {
    // The CI flow: ask the repository's version first, build only when newer.
    const ci = await submitJob(m, {
      command: [
        "/bin/sh",
        "-ec",
        `have=$(/kiln/bin/kiln job version kiln-hello --repo debs); echo "have $have"
         if dpkg --compare-versions 1.1-1 le "$have"; then echo "not newer: skipped"; exit 0; fi
         /kiln/bin/kiln job version no-such-package --repo debs || echo "absent: $?"
         ${BUILD_DEB}`,
        "build",
        "1.1-1",
      ],
      repo: "debs",
    });
    expect((await waitJob(m, ci, 120_000)).state).toBe("succeeded");
    const ciLog = await log(ci);
    expect(ciLog).toContain("have 1.0-1\n");
    expect(ciLog).toContain("has no package no-such-package\nabsent: 3\n");
    expect(ciLog).toContain("published into repository debs: kiln-hello 1.1-1 (amd64)");

    const upgrade = await inRoot(debian, ["sh", "-c", "apt-get update && apt-get install -y kiln-hello"]);
    expect(upgrade.code).toBe(0);
    expect((await inRoot(debian, ["kiln-hello"])).out).toBe("hello 1.1-1 from a kiln repository\n");

    // Rebuilding an older version: the job's work succeeded, its publish is refused, and it says so.
    const old = await build("0.9-1");
    const ended = await waitJob(m, old, 120_000);
    expect([ended.state, ended.reason, ended.exitCode]).toEqual(["failed", "publish", 0]);
    expect(ended.message).toContain("kiln-hello 0.9-1 (amd64) is not newer than 1.1-1 in repository debs");
    expect(await log(old)).toContain("--- kiln: publishing into repository debs failed: ");
    const shown = await m.cli(["show", String(old)]);
    expect(shown.stdout).toContain("publish");
    const wait = await m.cli([
      "submit",
      "--repo",
      "debs",
      "--wait",
      "--",
      "/bin/sh",
      "-ec",
      BUILD_DEB,
      "b",
      "0.8-1",
    ]);
    expect(wait.code).toBe(1);
    expect(wait.stderr).toContain("is not newer than 1.1-1");

    // The same job's packages go in with --force; the newest three versions stay.
    const forced = await m.cli(["repo", "publish", "debs", String(old), "--force"]);
    expect([forced.code, forced.stdout]).toEqual([0, "published into debs: kiln-hello 0.9-1 (amd64)\n"]);
    const listed = JSON.parse((await m.cli(["repo", "packages", "debs", "--json"])).stdout) as {
      version: string;
    }[];
    expect(listed.map((p) => p.version).sort()).toEqual(["0.9-1", "1.0-1", "1.1-1"]);
    // apt still installs the newest.
    await inRoot(debian, ["apt-get", "update"]);
    expect((await inRoot(debian, ["apt-cache", "policy", "kiln-hello"])).out).toContain("Candidate: 1.1-1");

    // A repository that does not exist is refused at submit, before anything is queued.
    const missing = await m.cli(["submit", "--repo", "nope", "--", "true"]);
    expect([missing.code, missing.stderr]).toEqual([2, expect.stringContaining("no repository nope")]);
  }, 600_000);

  test("an rpmbuild package published with --repo installs with dnf from the .repo file `kiln repo show` prints", async () => {
    const spec = helloSpec({
      name: "kiln-d-hello",
      version: "2.0",
      release: "1",
      output: "hello from a kiln rpm repository",
    });
    const id = await submitJob(m, {
      command: [
        "/bin/sh",
        "-ec",
        `mkdir -p /tmp/rpm/SPECS && printf '%s' "$1" > /tmp/rpm/SPECS/k.spec
         rpmbuild -bb --define "_topdir /tmp/rpm" --define "_tmppath /tmp" /tmp/rpm/SPECS/k.spec
         cp /tmp/rpm/RPMS/*/*.rpm "$KILN_OUT/"`,
        "rpmbuild",
        spec,
      ],
      repo: "rpms",
    });
    const job = await waitJob(m, id, 180_000);
    expect([job.state, job.message]).toEqual(["succeeded", null]);
    expect(await log(id)).toContain("published into repository rpms: kiln-d-hello 2.0-1 (x86_64)");

    const shown = JSON.parse((await m.cli(["repo", "show", "rpms", "--json"])).stdout);
    const base = join(dir.path, "dnf");
    mkdirSync(join(base, "repos.d"), { recursive: true });
    writeFileSync(join(base, "repos.d", "rpms.repo"), shown.usage.repoFile);
    writeFileSync(join(base, "dnf.conf"), "[main]\n");
    const installroot = join(base, "root");
    const r = await run(
      [
        "dnf",
        "-y",
        `--config=${join(base, "dnf.conf")}`,
        `--installroot=${installroot}`,
        "--releasever=/",
        `--setopt=reposdir=${join(base, "repos.d")}`,
        `--setopt=cachedir=${join(base, "cache")}`,
        "--setopt=install_weak_deps=False",
        "--noplugins",
        "install",
        "kiln-d-hello",
      ],
      { HOME: base },
    );
    expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: expect.any(String) });
    // dnf checked repomd.xml against the key the .repo file names.
    expect(r.err).toContain(`From       : ${m.url}/repos/rpms/key.asc`);
    expect((await run([join(installroot, "usr/bin/kiln-d-hello")])).out).toBe(
      "hello from a kiln rpm repository\n",
    );
  }, 600_000);

  test("a reader checking InRelease, every index by hash and every package never sees an inconsistent repository while 20 jobs publish", async () => {
    const keyring = join(dir.path, "live.gpg");
    const armored = (await m.cli(["repo", "key", "live"])).stdout;
    writeFileSync(
      keyring,
      Bun.spawnSync(["gpg", "--dearmor"], { stdin: new TextEncoder().encode(armored) }).stdout,
    );
    const base = `${m.url}/repos/live`;
    const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");
    const bytes = async (url: string) => {
      const res = await fetch(url);
      return { status: res.status, body: new Uint8Array(await res.arrayBuffer()) };
    };
    const problems: string[] = [];
    let reads = 0;
    let seen = 0;
    let done = false;
    const reader = (async () => {
      while (!done) {
        const inRelease = await bytes(`${base}/dists/stable/InRelease`);
        const file = join(dir.path, "InRelease");
        writeFileSync(file, inRelease.body);
        if (Bun.spawnSync(["gpgv", "--keyring", keyring, file], { stderr: "ignore" }).exitCode !== 0)
          problems.push("InRelease does not verify");
        const text = new TextDecoder().decode(inRelease.body);
        const listed = [
          ...text.matchAll(/^ ([0-9a-f]{64}) +(\d+) (main\/binary-amd64\/Packages(?:\.gz)?)$/gm),
        ];
        if (listed.length !== 2) problems.push(`InRelease lists ${listed.length} amd64 indexes`);
        for (const [, hash, size, rel] of listed) {
          const idx = await bytes(`${base}/dists/stable/${rel!.replace(/[^/]+$/, "")}by-hash/SHA256/${hash}`);
          if (idx.status !== 200 || sha(idx.body) !== hash || String(idx.body.length) !== size) {
            problems.push(`${rel} ${hash}: ${idx.status}`);
            continue;
          }
          if (rel!.endsWith(".gz")) continue;
          const stanzas = [
            ...new TextDecoder()
              .decode(idx.body)
              .matchAll(/^Filename: (\S+)\nSize: (\d+)\nMD5sum: \S+\nSHA256: (\S+)$/gm),
          ];
          seen = Math.max(seen, stanzas.length);
          for (const [, path, psize, psha] of stanzas) {
            const pkg = await bytes(`${base}/${path}`);
            if (pkg.status !== 200 || String(pkg.body.length) !== psize || sha(pkg.body) !== psha)
              problems.push(`${path}: ${pkg.status}`);
          }
        }
        reads++;
      }
    })();
    const ids: number[] = [];
    for (let i = 1; i <= 20; i++)
      ids.push(
        await submitJob(m, {
          command: ["/bin/sh", "-ec", BUILD_DEB, "build", "1.0", `kiln-live-${i}`],
          repo: "live",
        }),
      );
    const jobs = await Promise.all(ids.map((id) => waitJob(m, id, 300_000)));
    expect(jobs.map((j) => j.state)).toEqual(Array(20).fill("succeeded"));
    await waitFor("the reader to see all 20 packages", () => seen === 20, 60_000);
    done = true;
    await reader;
    expect(problems).toEqual([]);
    expect(reads).toBeGreaterThan(5);
  }, 600_000);

  test("hostile packages from a job change nothing: a path for a name, another architecture, an rpm into a deb repository", async () => {
    const before = (await m.cli(["repo", "packages", "debs", "--json"])).stdout;
    const b64 = (b: Uint8Array) => Buffer.from(b).toString("base64");
    const cases: [string, Uint8Array, string][] = [
      [
        "climb.deb",
        buildDeb({ control: controlText({ name: "../../etc", version: "9", arch: "amd64" }) }),
        "is not a Debian package name",
      ],
      [
        "arm.deb",
        buildDeb({ control: controlText({ name: "kiln-arm", version: "1", arch: "arm64" }) }),
        "repository debs takes amd64, all",
      ],
      [
        "link.deb",
        buildDeb({
          control: "",
          controlMembers: [{ name: "./control", type: "2", linkname: "/etc/shadow" }],
        }),
        "control file is a symlink",
      ],
    ];
    for (const [name, deb, words] of cases) {
      const id = await submitJob(m, {
        command: ["/bin/sh", "-ec", `echo ${b64(deb)} | base64 -d > "$KILN_OUT/${name}"`],
        repo: "debs",
      });
      const job = await waitJob(m, id, 120_000);
      expect([name, job.state, job.reason]).toEqual([name, "failed", "publish"]);
      expect(job.message).toContain(words);
    }
    const rpm = await submitJob(m, {
      command: ["/bin/sh", "-ec", `printf '\\355\\253\\356\\333' > "$KILN_OUT/x.rpm"`],
      repo: "debs",
    });
    expect((await waitJob(m, rpm, 120_000)).message).toContain(
      "is an RPM package; repository debs holds deb packages",
    );
    expect((await m.cli(["repo", "packages", "debs", "--json"])).stdout).toBe(before);
    expect(existsSync(join(m.data, "etc"))).toBe(false);
    const bad = await m.cli(["repo", "add", "../x", "--type", "deb"]);
    expect([bad.code, bad.stderr]).toEqual([2, expect.stringContaining("is not a valid name")]);
  }, 300_000);

  test("repositories survive a restart of the master, served from the same snapshot", async () => {
    const release = await (await fetch(`${m.url}/repos/debs/dists/bookworm/InRelease`)).text();
    await stopAll();
    m = await startMaster(dir.path, {
      role: "up",
      name: "up-2",
      env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "d-repos" },
    });
    expect(await (await fetch(`${m.url}/repos/debs/dists/bookworm/InRelease`)).text()).toBe(release);
    expect((await m.cli(["repo", "ls"])).stdout).toMatch(/^debs +deb/m);
    const rm = await m.cli(["repo", "rm", "live"]);
    expect(rm.code).toBe(0);
    expect((await fetch(`${m.url}/repos/live/dists/stable/InRelease`)).status).toBe(404);
    expect(existsSync(join(m.data, "repos", "live"))).toBe(false);
  }, 120_000);
});

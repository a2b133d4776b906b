// The RPM format end to end, as root: rpmbuild makes a package, Kiln places it and writes signed metadata,
// a Bun server on loopback serves the repository, and dnf installs from it into a fresh installroot with
// only the .repo file Kiln generates, checking repomd.xml's signature (repo_gpgcheck=1).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, normalize } from "node:path";
import type { Signer } from "./format.ts";
import { rpmRepoFile, writeRpmMetadata } from "./rpm.ts";
import { helloSpec, placeRpms, rpmbuild } from "./rpm-bench.ts";

const isRoot = process.getuid?.() === 0;

async function run(argv: string[], env: Record<string, string>, stdin?: string) {
  const proc = Bun.spawn(argv, {
    env,
    stdin: stdin === undefined ? "ignore" : "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  if (stdin !== undefined && proc.stdin) {
    proc.stdin.write(stdin);
    await proc.stdin.end();
  }
  const [out, err, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { out, err, code };
}

// A test-only signer: gpg with a key generated in a temporary GNUPGHOME. Kiln's own signer lives in
// signer.ts; this one only has to produce what any OpenPGP signer produces.
async function testSigner(home: string): Promise<Signer> {
  mkdirSync(home, { mode: 0o700 });
  const env = { GNUPGHOME: home, PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C" };
  const gpg = async (args: string[], stdin?: string) => {
    const r = await run(
      ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", ...args],
      env,
      stdin,
    );
    if (r.code !== 0) throw new Error(`gpg ${args.join(" ")} failed: ${r.err}`);
    return r.out;
  };
  await gpg(["--quick-gen-key", "Kiln test repository <kiln-r@test.invalid>", "ed25519", "sign", "never"]);
  return {
    clearsign: (text) => gpg(["--clearsign"], text),
    detachSign: (data) =>
      gpg(["--armor", "--detach-sign"], typeof data === "string" ? data : new TextDecoder().decode(data)),
    publicKey: () => gpg(["--armor", "--export"]),
  };
}

// Serves a directory read-only on 127.0.0.1, as the master serves /repos/NAME/; stops in afterAll.
function serve(root: string) {
  return Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const path = normalize(decodeURIComponent(new URL(req.url).pathname));
      if (path.includes("..")) return new Response("no", { status: 400 });
      const file = Bun.file(join(root, path));
      return (await file.exists()) ? new Response(file) : new Response("not found", { status: 404 });
    },
  });
}

describe.skipIf(!isRoot)("dnf installs from a Kiln RPM repository (root)", () => {
  let dir: string;
  let root: string;
  let server: ReturnType<typeof Bun.serve>;
  let signer: Signer;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "kiln-r-dnf-"));
    root = join(dir, "repo");
    signer = await testSigner(join(dir, "gnupg"));
    const built = await rpmbuild(
      join(dir, "build"),
      helloSpec({
        name: "kiln-r-hello",
        version: "2.10",
        release: "1",
        output: "hello from a kiln repository",
      }),
      "-bb",
    );
    const packages = await placeRpms(root, built);
    await writeRpmMetadata(root, { name: "r-dnf", format: "rpm", archs: [] }, packages, signer);
    writeFileSync(join(root, "key.asc"), await signer.publicKey());
    server = serve(root);
  }, 120_000);

  afterAll(async () => {
    await server?.stop(true);
    // gpg starts an agent for its home; end it rather than leave it to notice its directory is gone.
    await run(["gpgconf", "--kill", "all"], {
      GNUPGHOME: join(dir, "gnupg"),
      PATH: process.env.PATH ?? "/usr/bin:/bin",
    });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  // dnf into a fresh installroot that knows only the repository's .repo file; returns dnf's outcome.
  async function dnfInstall(name: string, repoFile: string) {
    const base = join(dir, name);
    const reposdir = join(base, "repos.d");
    mkdirSync(reposdir, { recursive: true });
    writeFileSync(join(reposdir, "kiln.repo"), repoFile);
    // An empty main config, so nothing of the host's dnf set-up (repositories, plugins, proxies) applies.
    writeFileSync(join(base, "dnf.conf"), "[main]\n");
    const installroot = join(base, "root");
    const r = await run(
      [
        "dnf",
        "-y",
        `--config=${join(base, "dnf.conf")}`,
        `--installroot=${installroot}`,
        "--releasever=/",
        `--setopt=reposdir=${reposdir}`,
        `--setopt=cachedir=${join(base, "cache")}`,
        "--setopt=install_weak_deps=False",
        "--noplugins",
        "install",
        "kiln-r-hello",
      ],
      { PATH: process.env.PATH ?? "/usr/bin:/bin", LC_ALL: "C", HOME: base },
    );
    return { ...r, installroot };
  }

  const repoFile = () =>
    rpmRepoFile({
      name: "r-dnf",
      baseurl: `http://127.0.0.1:${server.port}/`,
      keyUrl: `http://127.0.0.1:${server.port}/key.asc`,
    });

  test("dnf verifies the signed repomd.xml, installs the package, and the program runs", async () => {
    const r = await dnfInstall("good", repoFile());
    expect({ code: r.code, err: r.err }).toEqual({ code: 0, err: expect.any(String) });
    const hello = await run([join(r.installroot, "usr/bin/kiln-r-hello")], { PATH: "/usr/bin:/bin" });
    expect(hello.out).toBe("hello from a kiln repository\n");
    // dnf fetched the key from the .repo file's gpgkey URL to check repomd.xml.asc.
    expect(r.err).toContain(`From       : http://127.0.0.1:${server.port}/key.asc`);
  }, 300_000);

  test("a repomd.xml whose signature does not match is refused by dnf", async () => {
    const asc = join(root, "repodata", "repomd.xml.asc");
    const good = await Bun.file(asc).text();
    writeFileSync(asc, await signer.detachSign("not the repomd.xml"));
    try {
      const r = await dnfInstall("forged", repoFile());
      expect(r.code).not.toBe(0);
      expect(r.err).toContain("repomd.xml GPG signature verification error: Bad GPG signature");
    } finally {
      writeFileSync(asc, good);
    }
  }, 300_000);

  test("a repository whose repomd.xml lost its signature is refused by dnf", async () => {
    const asc = join(root, "repodata", "repomd.xml.asc");
    const good = await Bun.file(asc).text();
    rmSync(asc);
    try {
      const r = await dnfInstall("unsigned", repoFile());
      expect(r.code).not.toBe(0);
      expect(r.err).toMatch(/Failed to download metadata for repo 'kiln-r-dnf'/);
      expect(r.err).toMatch(/repomd\.xml\.asc|GPG/);
    } finally {
      writeFileSync(asc, good);
    }
  }, 300_000);
});

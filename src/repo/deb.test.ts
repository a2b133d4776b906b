// The Debian format against dpkg itself: packages built by dpkg-deb read as dpkg-deb reports them, hostile
// packages (a path for a name, links and twins for a control file, a huge or a bomb of a control area)
// are refused with BAD_PACKAGE, and the metadata written from stored fields only hashes and signs right.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import { createDebFormat, debPoolPath, parseControl, readDeb, writeDebMetadata } from "./deb.ts";
import { buildDeb, controlText, type TarMember } from "./deb-build.ts";
import type { PublishedPackage, RepoSettings } from "./format.ts";
import { openKeyRing } from "./signer.ts";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-deb-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha256 = (file: string) => new Bun.CryptoHasher("sha256").update(readFileSync(file)).digest("hex");

// A package built by dpkg-deb itself from a tree with a DEBIAN/control, compressed as asked.
function dpkgBuild(name: string, control: string, compression: string): string {
  const tree = join(dir, `tree-${name}-${compression}`);
  mkdirSync(join(tree, "DEBIAN"), { recursive: true });
  mkdirSync(join(tree, "usr", "bin"), { recursive: true });
  writeFileSync(join(tree, "DEBIAN", "control"), control);
  writeFileSync(join(tree, "usr", "bin", name), "#!/bin/sh\necho hi\n", { mode: 0o755 });
  const out = join(dir, `${name}-${compression}.deb`);
  const r = Bun.spawnSync(["dpkg-deb", "--root-owner-group", "-Z", compression, "--build", tree, out]);
  if (r.exitCode !== 0) throw new Error(r.stderr.toString());
  return out;
}

const dpkgField = (file: string, field: string) =>
  Bun.spawnSync(["dpkg-deb", "-f", file, field]).stdout.toString().trim();

function write(name: string, bytes: Uint8Array): string {
  const file = join(dir, name);
  writeFileSync(file, bytes);
  return file;
}

async function refused(file: string): Promise<string> {
  const err = await readDeb(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe("BAD_PACKAGE");
  return (err as AppError).message;
}

describe("reading a .deb", () => {
  test("every compression dpkg-deb writes reads as dpkg-deb -f reports it", async () => {
    const control = controlText({
      name: "kiln-hello",
      version: "1:2.10-3~bpo1",
      arch: "amd64",
      extra: "Source: hello-src (2.10-3)\nDepends: libc6 (>= 2.34)\n",
    });
    for (const how of ["gzip", "xz", "zstd", "none"]) {
      const file = dpkgBuild("kiln-hello", control, how);
      const info = await readDeb(file);
      expect([info.name, info.version, info.arch, info.source]).toEqual([
        dpkgField(file, "Package"),
        dpkgField(file, "Version"),
        dpkgField(file, "Architecture"),
        "hello-src",
      ]);
      expect(info.size).toBe(statSync(file).size);
      expect(info.sha256).toBe(sha256(file));
      expect(info.meta.Depends).toBe("libc6 (>= 2.34)");
      expect(info.meta.Description).toBe(dpkgField(file, "Description"));
      expect(info.meta.MD5sum).toBe(new Bun.CryptoHasher("md5").update(readFileSync(file)).digest("hex"));
    }
  });

  test("the test builder's packages are ones dpkg-deb reads the same way", async () => {
    for (const compression of ["gz", "xz", "zst", "none"] as const) {
      const file = write(
        `built-${compression}.deb`,
        buildDeb({ control: controlText({ name: "kiln-made", version: "0.1-1", arch: "all" }), compression }),
      );
      expect(Bun.spawnSync(["dpkg-deb", "--info", file]).exitCode).toBe(0);
      const info = await readDeb(file);
      expect([info.name, info.version, info.arch]).toEqual(["kiln-made", "0.1-1", "all"]);
      expect(dpkgField(file, "Package")).toBe("kiln-made");
    }
  });

  test("symlinks and hard links among the installed files are an ordinary package", async () => {
    const data: TarMember[] = [
      { name: "./", type: "5" },
      { name: "./usr/", type: "5" },
      { name: "./usr/bin/", type: "5" },
      { name: "./usr/bin/tool", data: "#!/bin/sh\n", mode: 0o755 },
      { name: "./usr/bin/tool-link", type: "2", linkname: "/etc/shadow" },
      { name: "./usr/bin/tool-hard", type: "1", linkname: "./usr/bin/tool" },
    ];
    const file = write(
      "links.deb",
      buildDeb({ control: controlText({ name: "kiln-links", version: "1", arch: "amd64" }), data }),
    );
    expect((await readDeb(file)).name).toBe("kiln-links");
  });
});

describe("hostile .debs are refused with BAD_PACKAGE", () => {
  const deb = (name: string, control: string, controlMembers?: TarMember[]) =>
    write(name, buildDeb({ control, controlMembers }));

  test("a Package, Version, Architecture or Source that would climb out of the pool", async () => {
    expect(
      await refused(deb("a.deb", controlText({ name: "../../etc", version: "1", arch: "amd64" }))),
    ).toMatch(/Package "\.\.\/\.\.\/etc" is not a Debian package name/);
    expect(await refused(deb("b.deb", controlText({ name: "x/y", version: "1", arch: "amd64" })))).toMatch(
      /Package "x\/y"/,
    );
    expect(
      await refused(deb("c.deb", controlText({ name: "ok", version: "1/../../x", arch: "amd64" }))),
    ).toMatch(/Version .* is not a Debian version/);
    expect(await refused(deb("d.deb", controlText({ name: "ok", version: "1", arch: "../amd64" })))).toMatch(
      /Architecture .* is not one architecture/,
    );
    expect(
      await refused(deb("e.deb", controlText({ name: "ok", version: "1", arch: "amd64 i386" }))),
    ).toMatch(/Architecture "amd64 i386" is not one architecture/);
    expect(
      await refused(
        deb("f.deb", controlText({ name: "ok", version: "1", arch: "amd64", extra: "Source: ../x\n" })),
      ),
    ).toMatch(/Source "\.\.\/x"/);
  });

  test("a control file that is a symlink, a hard link, or there twice", async () => {
    const base = controlText({ name: "kiln-twin", version: "1", arch: "amd64" });
    expect(
      await refused(
        deb("sym.deb", base, [
          { name: "./", type: "5" },
          { name: "./control", type: "2", linkname: "/etc/passwd" },
        ]),
      ),
    ).toMatch(/control file is a symlink \(to "\/etc\/passwd"\)/);
    expect(
      await refused(
        deb("hard.deb", base, [
          { name: "./", type: "5" },
          { name: "./md5sums", data: base },
          { name: "./control", type: "1", linkname: "./md5sums" },
        ]),
      ),
    ).toMatch(/control file is a hard link/);
    // dpkg extracts in order: the second control is what it would install, whatever the first says.
    expect(
      await refused(
        deb("twice.deb", base, [
          { name: "./control", data: base },
          { name: "control", data: controlText({ name: "kiln-other", version: "9", arch: "i386" }) },
        ]),
      ),
    ).toMatch(/control file twice/);
    expect(await refused(deb("none.deb", base, [{ name: "./md5sums", data: "" }]))).toMatch(
      /no control file/,
    );
  });

  test("a huge control file and a control area that decompresses without end stop at their limits", async () => {
    const huge = controlText({
      name: "kiln-huge",
      version: "1",
      arch: "amd64",
      extra: `X-Padding: ${"a".repeat(2 * 1024 * 1024)}\n`,
    });
    expect(await refused(deb("huge.deb", huge))).toMatch(
      /control is 2\d+ bytes, more than the 1048576 allowed/,
    );
    // 80 MiB of zeros in a member nobody wants: gzip makes it small, the reader stops at 64 MiB.
    const bomb = deb("bomb.deb", controlText({ name: "kiln-bomb", version: "1", arch: "amd64" }), [
      { name: "./control", data: controlText({ name: "kiln-bomb", version: "1", arch: "amd64" }) },
      { name: "./md5sums", data: new Uint8Array(80 * 1024 * 1024) },
    ]);
    expect(statSync(bomb).size).toBeLessThan(1024 * 1024);
    expect(await refused(bomb)).toMatch(/archive is larger than 67108864 bytes/);
    // Making and reading 80 MiB takes seconds on a busy machine: more than the default five.
  }, 60_000);

  test("control files that are not one clean paragraph", async () => {
    const head = "Package: kiln-p\nVersion: 1\nArchitecture: amd64\n";
    expect(await refused(deb("para.deb", `${head}\nPackage: evil\nVersion: 2\n`))).toMatch(
      /more than one paragraph/,
    );
    expect(await refused(deb("dup.deb", `${head}package: evil\n`))).toMatch(/field package twice/);
    expect(await refused(deb("cr.deb", `${head}Description: x\r\n`))).toMatch(/control character/);
    expect(await refused(deb("junk.deb", `${head}not a field\n`))).toMatch(/not a "Field: value" line/);
    expect(await refused(deb("cont.deb", ` continued\n${head}`))).toMatch(/continues a field/);
    const latin1 = new Uint8Array([...new TextEncoder().encode(`${head}Description: caf`), 0xe9, 0x0a]);
    expect(
      await refused(
        write("latin1.deb", buildDeb({ control: "", controlMembers: [{ name: "./control", data: latin1 }] })),
      ),
    ).toMatch(/not UTF-8/);
  });

  test("fields the repository sets are dropped from what the package says", async () => {
    const file = deb(
      "fields.deb",
      controlText({
        name: "kiln-fields",
        version: "1",
        arch: "amd64",
        extra: "Filename: ../../../etc/passwd\nSHA256: 00\nSize: 1\n",
      }),
    );
    const info = await readDeb(file);
    expect(Object.keys(info.meta)).not.toContain("Filename");
    expect(Object.keys(info.meta)).not.toContain("SHA256");
    expect(Object.keys(info.meta)).not.toContain("Size");
  });

  test("files that are not packages, truncated packages and unreadable ones", async () => {
    expect(await refused(write("empty.deb", new Uint8Array()))).toMatch(/not a valid Debian package/);
    expect(await refused(write("text.deb", new TextEncoder().encode("#!/bin/sh\n".repeat(50))))).toMatch(
      /not a valid Debian package/,
    );
    const whole = buildDeb({ control: controlText({ name: "kiln-cut", version: "1", arch: "amd64" }) });
    expect(await refused(write("cut.deb", whole.subarray(0, 150)))).toMatch(/not a valid Debian package/);
    const locked = write("locked.deb", whole);
    chmodSync(locked, 0o000);
    // Root reads it anyway; anyone else gets dpkg-deb's own complaint, never a crash.
    const r = await readDeb(locked).then(
      (i) => i.name,
      (e: AppError) => e.code,
    );
    expect(["kiln-cut", "BAD_PACKAGE"]).toContain(r);
  });

  test("500 random corruptions of a package each read or give BAD_PACKAGE, never another error", async () => {
    const whole = buildDeb({
      control: controlText({ name: "kiln-fuzz", version: "1", arch: "amd64" }),
      compression: "none",
    });
    let seed = 4242;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 500; i++) {
      const b = whole.slice(0, rand(6) === 0 ? rand(whole.length) : whole.length);
      for (let k = 1 + rand(4); k > 0; k--) if (b.length) b[rand(Math.min(b.length, 2048))] = rand(256);
      const file = write("fuzz.deb", b);
      const result = await readDeb(file).then(
        () => "read",
        (e: unknown) => (e instanceof AppError ? e.code : `unexpected: ${String(e)}`),
      );
      outcomes.set(result, (outcomes.get(result) ?? 0) + 1);
    }
    expect([...outcomes.keys()].filter((k) => k !== "read" && k !== "BAD_PACKAGE")).toEqual([]);
    expect(outcomes.get("BAD_PACKAGE") ?? 0).toBeGreaterThan(50);
  }, 60_000);
});

describe("control files and pool paths", () => {
  test("continuation lines are kept, field names are case-insensitive", () => {
    const f = parseControl("Package: a\nDescription: one\n two\n .\n three\n\n", (w) => new Error(w));
    expect(f.get("Description")).toBe("one\n two\n .\n three");
  });

  test("pool paths follow Debian's archive: source, lib prefix, no epoch", async () => {
    const settings: RepoSettings = { name: "r", format: "deb", archs: ["amd64"], component: "main" };
    const pkg = (name: string, version: string, source?: string) => ({
      format: "deb" as const,
      name,
      version,
      arch: "amd64",
      source,
      size: 1,
      sha256: "0",
      meta: {},
    });
    expect(debPoolPath(pkg("hello", "1:2.10-3"), settings)).toBe("pool/main/h/hello/hello_2.10-3_amd64.deb");
    expect(debPoolPath(pkg("libfoo1", "1.0", "libfoo"), settings)).toBe(
      "pool/main/libf/libfoo/libfoo1_1.0_amd64.deb",
    );
    expect(() => debPoolPath(pkg("../x", "1"), settings)).toThrow(/unsafe package path/);
    expect(() => debPoolPath(pkg("x", "1"), { ...settings, component: "../c" })).toThrow(/unsafe/);
    expect(createDebFormat().compare("1.0~rc1", "1.0")).toBeLessThan(0);
  });
});

describe("Debian repository metadata", () => {
  test("Packages, Release and by-hash agree, and gpgv accepts InRelease and Release.gpg", async () => {
    const root = join(dir, "repo");
    const settings: RepoSettings = {
      name: "tools",
      format: "deb",
      dist: "bookworm",
      component: "main",
      archs: ["amd64", "all"],
    };
    const packages: PublishedPackage[] = [];
    for (const [name, arch] of [
      ["kiln-a", "amd64"],
      ["kiln-b", "all"],
    ] as const) {
      const file = write(`${name}.deb`, buildDeb({ control: controlText({ name, version: "1.0-1", arch }) }));
      const info = await readDeb(file);
      const path = debPoolPath(info, settings);
      mkdirSync(join(root, path, ".."), { recursive: true });
      writeFileSync(join(root, path), readFileSync(file));
      packages.push({ ...info, path });
    }
    const keys = openKeyRing(join(dir, "keys"));
    try {
      await writeDebMetadata(root, settings, packages, keys.signer(null));
      const dists = join(root, "dists", "bookworm");
      const release = readFileSync(join(dists, "Release"), "utf8");
      expect(release).toContain("Acquire-By-Hash: yes\n");
      expect(release).toContain("Architectures: all amd64\n");
      // Every file Release lists has that size and hash, also under by-hash.
      const listed = [...release.split("SHA256:\n")[1]!.matchAll(/^ ([0-9a-f]{64}) +(\d+) (\S+)$/gm)];
      expect(listed.length).toBe(4);
      for (const [, hash, size, rel] of listed) {
        const file = join(dists, rel!);
        expect([sha256(file), String(statSync(file).size)]).toEqual([hash!, size!]);
        expect(sha256(join(file, "..", "by-hash", "SHA256", hash!))).toBe(hash!);
      }
      const amd64 = readFileSync(join(dists, "main", "binary-amd64", "Packages"), "utf8");
      expect([...amd64.matchAll(/^Package: (.*)$/gm)].map((m) => m[1])).toEqual(["kiln-a", "kiln-b"]);
      expect(amd64).toContain(
        `Filename: pool/main/k/kiln-a/kiln-a_1.0-1_amd64.deb\nSize: ${packages[0]!.size}\n`,
      );
      const all = readFileSync(join(dists, "main", "binary-all", "Packages"), "utf8");
      expect([...all.matchAll(/^Package: (.*)$/gm)].map((m) => m[1])).toEqual(["kiln-b"]);
      // dpkg-scanpackages, reading the files themselves, lists the same fields and hashes.
      const scanned = Bun.spawnSync(["dpkg-scanpackages", "-m", "pool"], {
        cwd: root,
        stderr: "ignore",
      }).stdout.toString();
      const fieldsOf = (text: string) =>
        text
          .split("\n\n")
          .filter(Boolean)
          .map((s) =>
            Object.fromEntries(
              [...s.matchAll(/^([A-Za-z0-9-]+): (.*)$/gm)]
                .filter((m) => m[1] !== "SHA1")
                .map((m) => [m[1], m[2]]),
            ),
          );
      expect(fieldsOf(amd64)).toEqual(fieldsOf(scanned));

      const keyFile = join(dir, "key.gpg");
      const armored = await keys.signer(null).publicKey();
      const dearmor = Bun.spawnSync(["gpg", "--dearmor"], { stdin: new TextEncoder().encode(armored) });
      writeFileSync(keyFile, dearmor.stdout);
      const gpgv = (args: string[]) =>
        Bun.spawnSync(["gpgv", "--keyring", keyFile, ...args], { stderr: "pipe" }).exitCode;
      expect(gpgv([join(dists, "InRelease")])).toBe(0);
      expect(gpgv([join(dists, "Release.gpg"), join(dists, "Release")])).toBe(0);
      writeFileSync(join(dists, "Release"), release.replace("Label: tools", "Label: evil"));
      expect(gpgv([join(dists, "Release.gpg"), join(dists, "Release")])).not.toBe(0);
    } finally {
      await keys.close();
    }
  });
});

// The RPM format against rpm itself: packages built by rpmbuild are read by Kiln and by `rpm -qp`, hostile
// headers are refused with BAD_PACKAGE, and createrepo_c's metadata is regenerated incrementally.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  copyFileSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { PublishedPackage } from "./format.ts";
import { createRpmFormat, readRpm, rpmPoolPath, rpmRepoFile, writeRpmMetadata } from "./rpm.ts";
import { helloSpec, manySpec, placeRpms, rpmbuild } from "./rpm-bench.ts";

let dir: string;
let hello: string;
let helloSrc: string;
let tilde: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-r-rpm-"));
  const a = await rpmbuild(
    join(dir, "a"),
    helloSpec({ name: "kiln-r-hello", version: "2.10", release: "1", epoch: 3, output: "hi" }),
  );
  hello = a.find((f) => f.endsWith(".x86_64.rpm")) as string;
  helloSrc = a.find((f) => f.endsWith(".src.rpm")) as string;
  const b = await rpmbuild(
    join(dir, "b"),
    helloSpec({ name: "kiln-r-tilde", version: "1.0~rc1", release: "0.1", output: "rc" }),
    "-bb",
  );
  tilde = b[0] as string;
}, 120_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

// What rpm itself reports for a package, one tag per line.
function rpmQuery(file: string): Record<string, string> {
  const tags = [
    "NAME",
    "EPOCH",
    "VERSION",
    "RELEASE",
    "ARCH",
    "SOURCERPM",
    "SUMMARY",
    "LICENSE",
    "URL",
    "BUILDTIME",
  ];
  const out = Bun.spawnSync(["rpm", "-qp", "--qf", tags.map((t) => `%{${t}}\\n`).join(""), file]);
  expect(out.exitCode).toBe(0);
  const lines = out.stdout.toString().split("\n");
  return Object.fromEntries(tags.map((t, i) => [t, lines[i] as string]));
}

describe("reading an RPM", () => {
  test("every field Kiln reads matches rpm -qp, for binary packages with and without an epoch", async () => {
    for (const file of [hello, tilde]) {
      const q = rpmQuery(file);
      const info = await readRpm(file);
      const epoch = q.EPOCH === "(none)" ? "" : `${q.EPOCH}:`;
      expect(info).toEqual({
        format: "rpm",
        name: q.NAME as string,
        version: `${epoch}${q.VERSION}-${q.RELEASE}`,
        arch: q.ARCH as string,
        source: q.NAME as string,
        size: statSync(file).size,
        sha256: new Bun.CryptoHasher("sha256").update(readFileSync(file)).digest("hex"),
        meta: {
          version: q.VERSION as string,
          release: q.RELEASE as string,
          buildArch: q.ARCH as string,
          ...(epoch ? { epoch: q.EPOCH as string } : {}),
          sourceRpm: q.SOURCERPM as string,
          summary: q.SUMMARY as string,
          license: q.LICENSE as string,
          url: q.URL as string,
          buildTime: q.BUILDTIME as string,
        },
      });
    }
  });

  test("a package with 3,000 files and an 8 MiB payload (a large header) reads as rpm -qp reports", async () => {
    const spec = helloSpec({ name: "kiln-r-big", version: "1", release: "1", output: "big" })
      .replace(
        "%install\n",
        "%install\nmkdir -p %{buildroot}/usr/share/kiln-r-big\n" +
          "for i in $(seq 3000); do echo $i > %{buildroot}/usr/share/kiln-r-big/file-with-a-long-name-$i; done\n" +
          "head -c 8388608 /dev/urandom > %{buildroot}/usr/share/kiln-r-big/blob\n",
      )
      .replace("%files\n", "%files\n/usr/share/kiln-r-big\n")
      // Random bytes do not compress; store them, so the test spends no time trying.
      .replace("%description", "%define _binary_payload w0.ufdio\n\n%description");
    const [big] = await rpmbuild(join(dir, "big"), spec, "-bb");
    const q = rpmQuery(big as string);
    const info = await readRpm(big as string);
    expect([info.name, info.version, info.arch, info.meta.summary]).toEqual([
      q.NAME as string,
      `${q.VERSION}-${q.RELEASE}`,
      q.ARCH as string,
      q.SUMMARY as string,
    ]);
    expect(info.size).toBeGreaterThan(8 << 20);
    expect(info.sha256).toBe(
      new Bun.CryptoHasher("sha256").update(readFileSync(big as string)).digest("hex"),
    );
  }, 120_000);

  test("a source RPM is recognized: arch src, no source package, rpm's own fields", async () => {
    const q = rpmQuery(helloSrc);
    expect(q.SOURCERPM).toBe("(none)");
    const info = await readRpm(helloSrc);
    expect(info.arch).toBe("src");
    expect(info.source).toBeUndefined();
    expect(info.version).toBe(`${q.EPOCH}:${q.VERSION}-${q.RELEASE}`);
    expect(info.meta.buildArch).toBe(q.ARCH as string);
    expect(rpmPoolPath(info)).toBe("Packages/k/kiln-r-hello-2.10-1.src.rpm");
  });

  test("pool paths follow rpm's file names and the format orders versions as rpm does", async () => {
    const fmt = createRpmFormat();
    const settings = { name: "r", format: "rpm" as const, archs: [] };
    expect(fmt.poolPath(await readRpm(hello), settings)).toBe("Packages/k/kiln-r-hello-2.10-1.x86_64.rpm");
    expect(fmt.poolPath(await readRpm(tilde), settings)).toBe(
      "Packages/k/kiln-r-tilde-1.0~rc1-0.1.x86_64.rpm",
    );
    expect(fmt.compare("1.0~rc1-0.1", "1.0-0.1")).toBe(-1);
    expect(fmt.compare("3:2.10-1", "2.11-1")).toBe(1);
  });
});

// The byte layout of a real package, so each hostile case changes exactly one thing.
function layout(bytes: Uint8Array) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const sigCount = view.getUint32(96 + 8);
  const sigStore = view.getUint32(96 + 12);
  const mainAt = Math.ceil((96 + 16 + sigCount * 16 + sigStore) / 8) * 8;
  const mainCount = view.getUint32(mainAt + 8);
  const mainStore = view.getUint32(mainAt + 12);
  const storeAt = mainAt + 16 + mainCount * 16;
  let nameEntry = -1;
  let digestAt = -1;
  const sigStoreAt = 96 + 16 + sigCount * 16;
  for (let i = 0; i < sigCount; i++) {
    if (view.getUint32(96 + 16 + i * 16) === 273)
      digestAt = sigStoreAt + view.getUint32(96 + 16 + i * 16 + 8);
  }
  for (let i = 0; i < mainCount; i++)
    if (view.getUint32(mainAt + 16 + i * 16) === 1000) nameEntry = mainAt + 16 + i * 16;
  return {
    bytes,
    view,
    digestAt,
    mainAt,
    mainCount,
    mainStore,
    storeAt,
    nameEntry,
    end: storeAt + mainStore,
  };
}

async function expectBad(bytes: Uint8Array, message: RegExp) {
  const file = join(dir, "hostile.rpm");
  writeFileSync(file, bytes);
  const err = await readRpm(file).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  expect((err as AppError).code).toBe("BAD_PACKAGE");
  expect((err as AppError).message).toMatch(message);
}

describe("hostile RPMs are refused with BAD_PACKAGE", () => {
  // Changes a real package and, as a hostile builder would, records the new header's digest so the
  // change reaches the check it is aimed at (unless `keepDigest`, to show the digest check itself).
  const edit = (fn: (l: ReturnType<typeof layout>) => void, keepDigest = false) => {
    const l = layout(new Uint8Array(readFileSync(hello)));
    fn(l);
    if (!keepDigest && l.end <= l.bytes.length) {
      const digest = new Bun.CryptoHasher("sha256").update(l.bytes.subarray(l.mainAt, l.end)).digest("hex");
      l.bytes.set(new TextEncoder().encode(digest), l.digestAt);
    }
    return l.bytes;
  };

  test("empty, short and foreign files", async () => {
    await expectBad(new Uint8Array(0), /lead needs 96 bytes .* ends at 0/);
    await expectBad(new Uint8Array(readFileSync(hello)).subarray(0, 50), /truncated/);
    await expectBad(new TextEncoder().encode("#!/bin/sh\n".repeat(20)), /lead magic ed ab ee db/);
  });

  test("a package truncated in each part", async () => {
    const full = new Uint8Array(readFileSync(hello));
    const l = layout(full);
    for (const [cut, part] of [
      [96 + 8, /signature header needs/],
      [l.mainAt - 3, /signature header's store|main header needs/],
      [l.mainAt + 16 + 8, /main header's index needs/],
      [l.end - 1, /main header's store needs/],
    ] as const) {
      await expectBad(full.subarray(0, cut), part);
    }
  });

  test("entry counts and store sizes beyond any real header, before anything is allocated", async () => {
    await expectBad(
      edit((l) => l.view.setUint32(96 + 8, 0xffffffff)),
      /signature header claims 4294967295 entries/,
    );
    await expectBad(
      edit((l) => l.view.setUint32(l.mainAt + 8, 70_000)),
      /main header claims 70000 entries/,
    );
    await expectBad(
      edit((l) => l.view.setUint32(l.mainAt + 8, 0)),
      /main header claims 0 entries/,
    );
    await expectBad(
      edit((l) => l.view.setUint32(l.mainAt + 12, 0x7fffffff)),
      /claims a 2147483647-byte store/,
    );
    // Under the ceiling but beyond the file: refused from the file's size, not by reading 60 MiB.
    await expectBad(
      edit((l) => l.view.setUint32(l.mainAt + 12, 60 << 20)),
      /store needs 62914560 bytes/,
    );
  });

  test("index entries pointing outside the store", async () => {
    await expectBad(
      edit((l) => l.view.setUint32(l.nameEntry + 8, l.mainStore + 10)),
      /tag 1000\) points at \d+, beyond the \d+-byte store/,
    );
    await expectBad(
      edit((l) => l.view.setUint32(l.nameEntry + 12, 0xffffffff)),
      /is a single string with count|holds 4294967295 values/,
    );
    await expectBad(
      edit((l) => {
        // The name starts at the store's last byte, which is no longer a NUL: the text has no end.
        l.bytes[l.end - 1] = 0x41;
        l.view.setUint32(l.nameEntry + 8, l.mainStore - 1);
      }),
      /text runs past the end of the header store/,
    );
    // A string array as long as the store allows is refused only if read: the reader wants one string.
    const longArray = edit((l) => {
      l.view.setUint32(l.nameEntry + 4, 8);
      l.view.setUint32(l.nameEntry + 12, l.mainStore - l.view.getUint32(l.nameEntry + 8));
    });
    writeFileSync(join(dir, "long-array.rpm"), longArray);
    expect((await readRpm(join(dir, "long-array.rpm"))).name).toBe("kiln-r-hello");
    await expectBad(
      edit((l) => l.view.setUint32(l.nameEntry + 4, 77)),
      /unknown type 77/,
    );
    await expectBad(
      edit((l) => l.view.setUint32(l.nameEntry + 4, 4)),
      /NAME|should hold text/,
    );
  });

  test("a header changed after the build no longer matches the digest rpm recorded", async () => {
    const altered = edit(
      (l) =>
        l.bytes.set(new TextEncoder().encode("kiln-r-hellp"), l.storeAt + l.view.getUint32(l.nameEntry + 8)),
      true,
    );
    await expectBad(altered, /does not match the SHA-256 digest recorded in its signature/);
  });

  test("a name that would climb out of the pool", async () => {
    const hostile = edit((l) => {
      const at = l.storeAt + l.view.getUint32(l.nameEntry + 8);
      l.bytes.set(new TextEncoder().encode("../../etc/xx"), at);
    });
    await expectBad(hostile, /NAME "\.\.\/\.\.\/etc\/xx" has characters rpm does not allow/);
  });

  test("500 random corruptions of the headers each read or give BAD_PACKAGE, never another error", async () => {
    const full = new Uint8Array(readFileSync(hello));
    const l = layout(full);
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const file = join(dir, "fuzz.rpm");
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 500; i++) {
      const b = full.slice(0, rand(8) === 0 ? rand(l.end) : full.length);
      for (let k = 1 + rand(4); k > 0; k--) if (b.length) b[rand(Math.min(b.length, l.end))] = rand(256);
      writeFileSync(file, b);
      const result = await readRpm(file).then(
        () => "read",
        (e: unknown) => (e instanceof AppError ? e.code : `unexpected: ${String(e)}`),
      );
      outcomes.set(result, (outcomes.get(result) ?? 0) + 1);
    }
    expect([...outcomes.keys()].filter((k) => k !== "read" && k !== "BAD_PACKAGE")).toEqual([]);
    expect(outcomes.get("BAD_PACKAGE") ?? 0).toBeGreaterThan(50);
  });
});

describe("repository metadata", () => {
  const settings = { name: "r-test", format: "rpm" as const, archs: [] };

  // The package names primary.xml lists, read back from the metadata createrepo_c wrote.
  function listed(root: string): string[] {
    const repomd = readFileSync(join(root, "repodata", "repomd.xml"), "utf8");
    const href = /<data type="primary">[\s\S]*?<location href="([^"]+)"/.exec(repomd)?.[1] as string;
    const xml = new TextDecoder().decode(Bun.gunzipSync(readFileSync(join(root, href))));
    return [...xml.matchAll(/<name>([^<]+)<\/name>/g)].map((m) => m[1] as string).sort();
  }

  // A fresh snapshot directory holding hardlinks of `pkgs` from `from`, as a publish builds one.
  function snapshot(from: string, to: string, pkgs: PublishedPackage[]): string {
    for (const p of pkgs) {
      mkdirSync(join(to, p.path, ".."), { recursive: true });
      linkSync(join(from, p.path), join(to, p.path));
    }
    return to;
  }

  test("each publish into a fresh snapshot re-reads only new or changed packages and lists exactly the given set", async () => {
    const cacheDir = join(dir, "cache");
    const one = join(dir, "snap-1");
    const pkgs = await placeRpms(one, await rpmbuild(join(dir, "many"), manySpec("kiln-r-m", 12), "-bb"));
    const first = await writeRpmMetadata(one, settings, pkgs, undefined, { cacheDir });
    expect(first.read.length).toBe(12);
    expect(listed(one)).toEqual(pkgs.map((p) => p.name).sort());

    // One package added, one dropped: only the new one is read.
    const two = snapshot(one, join(dir, "snap-2"), pkgs.slice(1));
    const [added] = await placeRpms(two, await rpmbuild(join(dir, "one"), manySpec("kiln-r-n", 1), "-bb"));
    const next: PublishedPackage[] = [...pkgs.slice(1), added as PublishedPackage];
    const second = await writeRpmMetadata(two, settings, next, undefined, { cacheDir });
    expect(second.read).toEqual([(added as PublishedPackage).path]);
    expect(listed(two)).toEqual(next.map((p) => p.name).sort());

    // A file that changed under the same name (here: a newer mtime) is read again; a stray file the list
    // does not name stays out of the metadata.
    const three = snapshot(two, join(dir, "snap-3"), next);
    const changed = next[0] as PublishedPackage;
    copyFileSync(join(two, changed.path), join(three, "tmp.rpm"));
    renameSync(join(three, "tmp.rpm"), join(three, changed.path));
    await utimes(join(three, changed.path), new Date(), new Date(Date.now() + 60_000));
    copyFileSync(join(one, (pkgs[0] as PublishedPackage).path), join(three, "stray.rpm"));
    const third = await writeRpmMetadata(three, settings, next, undefined, { cacheDir });
    expect(third.read).toEqual([changed.path]);
    expect(listed(three)).toEqual(next.map((p) => p.name).sort());
  }, 120_000);

  test("two repositories publish in parallel, each with its own cache and exactly its own packages", async () => {
    const cacheDir = join(dir, "cache-parallel");
    const a = await placeRpms(
      join(dir, "par-a"),
      await rpmbuild(join(dir, "pa"), manySpec("kiln-r-pa", 5), "-bb"),
    );
    const b = await placeRpms(
      join(dir, "par-b"),
      await rpmbuild(join(dir, "pb"), manySpec("kiln-r-pb", 7), "-bb"),
    );
    const [ra, rb] = await Promise.all([
      writeRpmMetadata(join(dir, "par-a"), { ...settings, name: "par-a" }, a, undefined, { cacheDir }),
      writeRpmMetadata(join(dir, "par-b"), { ...settings, name: "par-b" }, b, undefined, { cacheDir }),
    ]);
    expect([ra.read.length, rb.read.length]).toEqual([5, 7]);
    expect(listed(join(dir, "par-a"))).toEqual(a.map((p) => p.name).sort());
    expect(listed(join(dir, "par-b"))).toEqual(b.map((p) => p.name).sort());
  }, 120_000);

  test("an empty package list gives an empty repository even with package files in the directory", async () => {
    const root = join(dir, "repo-empty");
    await placeRpms(root, await rpmbuild(join(dir, "stray"), manySpec("kiln-r-s", 2), "-bb"));
    const { read } = await writeRpmMetadata(root, settings, []);
    expect(read).toEqual([]);
    expect(listed(root)).toEqual([]);
  }, 120_000);

  test("a listed package createrepo_c cannot read (missing or broken) fails the publish and is named", async () => {
    const root = join(dir, "repo-broken");
    const [good] = await placeRpms(root, [
      (await rpmbuild(join(dir, "g"), manySpec("kiln-r-g", 1), "-bb"))[0] as string,
    ]);
    const whole = readFileSync(join(root, (good as PublishedPackage).path));
    writeFileSync(join(root, "Packages/k/kiln-r-cut-1-1.x86_64.rpm"), whole.subarray(0, 3000));
    const listed = [
      good as PublishedPackage,
      { ...(good as PublishedPackage), name: "kiln-r-cut", path: "Packages/k/kiln-r-cut-1-1.x86_64.rpm" },
      { ...(good as PublishedPackage), name: "kiln-r-gone", path: "Packages/k/kiln-r-gone-1-1.x86_64.rpm" },
    ];
    const err = await writeRpmMetadata(root, settings, listed).catch((e: unknown) => e);
    expect((err as AppError).code).toBe("METADATA_FAILED");
    expect((err as AppError).message).toMatch(/listed 1 of 3 packages/);
    expect((err as AppError).message).toContain("kiln-r-cut-1-1.x86_64.rpm");
    expect((err as AppError).message).toContain("kiln-r-gone-1-1.x86_64.rpm");
  }, 120_000);

  test("without createrepo_c the error names the Debian package to install", async () => {
    const root = join(dir, "empty");
    const saved = process.env.PATH;
    process.env.PATH = join(dir, "no-such-dir");
    try {
      const err = await writeRpmMetadata(root, settings, []).catch((e: unknown) => e);
      expect((err as AppError).code).toBe("CREATEREPO_MISSING");
      expect((err as AppError).message).toMatch(/install the Debian package createrepo-c/);
    } finally {
      process.env.PATH = saved;
    }
  });

  test("a repository name that could leave the cache directory is refused", async () => {
    const err = await writeRpmMetadata(join(dir, "x"), { ...settings, name: "../x" }, [], undefined, {
      cacheDir: join(dir, "cache"),
    }).catch((e: unknown) => e);
    expect((err as AppError).code).toBe("INVALID_NAME");
  });
});

describe(".repo file", () => {
  test("a signed repository turns on repo_gpgcheck and names its key", () => {
    expect(
      rpmRepoFile({ name: "tools", baseurl: "http://m:8080/repos/tools/", keyUrl: "http://m:8080/k.asc" }),
    ).toBe(`[kiln-tools]
name=Kiln repository tools
baseurl=http://m:8080/repos/tools/
enabled=1
gpgcheck=0
repo_gpgcheck=1
metadata_expire=300
gpgkey=http://m:8080/k.asc
`);
  });

  test("an unsigned repository checks nothing and names no key; odd names make a safe section id", () => {
    const text = rpmRepoFile({ name: "a b]", baseurl: "http://m/repos/x/" });
    expect(text).toContain("[kiln-a_b_]\n");
    expect(text).toContain("repo_gpgcheck=0\n");
    expect(text).not.toContain("gpgkey");
  });
});

import { afterEach, beforeEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import { buildDeb, controlText } from "../repo/deb-build.ts";
import { helloSpec, rpmbuild } from "../repo/rpm-bench.ts";
import { openStore, type Store } from "../store/open.ts";
import { getRepo, insertRepo, listRepoPackages } from "../store/repos.ts";
import { createApp } from "./app.ts";
import type { MasterContext } from "./context.ts";
import { currentGeneration, repoDir, snapshotGenerations, sweepSnapshots } from "./repo-snapshots.ts";
import { createRepoService, type PublishBy, type RepoService } from "./repos.ts";
import { testContext } from "./test-context.ts";

/*
 * The repository builder against a real store, real files, dpkg-deb, gpg and createrepo_c: what a publish
 * refuses and keeps, that it is all or nothing, that publishes into one repository queue while two
 * repositories publish side by side, that a reader never sees a mixed index, and that a crash at any
 * step leaves the committed snapshot served.
 */

// Every publish signs with gpg and some run createrepo_c: seconds on a busy machine.
setDefaultTimeout(60_000);

let dir: string;
let store: Store;
let ctx: MasterContext;
let repos: RepoService;
const by: PublishBy = { by: "test", jobId: null, force: false };

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-repos-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  ctx = testContext(dir, store);
  repos = ctx.repos;
});
afterEach(async () => {
  await repos.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

async function addRepo(name: string, o: { format?: "deb" | "rpm"; keep?: number; archs?: string[] } = {}) {
  const format = o.format ?? "deb";
  await insertRepo(store, {
    name,
    format,
    project: null,
    public: true,
    dist: format === "deb" ? "bookworm" : null,
    component: format === "deb" ? "main" : null,
    archs: o.archs ?? (format === "deb" ? ["amd64", "all"] : ["x86_64", "noarch"]),
    keep: o.keep ?? 3,
    keyFingerprint: null,
    createdAt: Date.now(),
    createdBy: "test",
  });
  await repos.create(name);
}

let made = 0;
/** A fresh .deb file (a new file each call: publishing moves it). */
function deb(name: string, version: string, arch = "amd64", extra = "") {
  const file = join(dir, `in-${made++}.deb`);
  writeFileSync(file, buildDeb({ control: controlText({ name, version, arch, extra }) }));
  return { path: file, label: `${name}_${version}_${arch}.deb` };
}

const packages = async (repo: string) =>
  (await listRepoPackages(store.db, repo)).map((p) => `${p.name} ${p.version} ${p.arch}`).sort();

async function refusal(p: Promise<unknown>): Promise<AppError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  return err as AppError;
}

/** Fetches a repository file through the app, as a client over HTTP would. */
async function get(path: string) {
  const res = await createApp(ctx).request(path);
  return { status: res.status, bytes: new Uint8Array(await res.arrayBuffer()) };
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe("publishing", () => {
  test("a new repository serves signed empty metadata before its first publish", async () => {
    await addRepo("tools");
    expect(currentGeneration(dir, "tools")).toBe(0);
    const release = await get("/repos/tools/dists/bookworm/InRelease");
    expect(release.status).toBe(200);
    expect(text(release.bytes)).toContain("-----BEGIN PGP SIGNED MESSAGE-----");
    expect(text((await get("/repos/tools/dists/bookworm/main/binary-amd64/Packages")).bytes)).toBe("");
    expect(text((await get("/repos/tools/key.asc")).bytes)).toContain("BEGIN PGP PUBLIC KEY BLOCK");
  });

  test("a package is served at its pool path and listed; the same file again changes nothing", async () => {
    await addRepo("tools");
    const first = deb("kiln-hello", "1.0-1");
    const bytes = readFileSync(first.path);
    const r = await repos.publish("tools", [first], by);
    expect(r.added.map((p) => p.path)).toEqual(["pool/main/k/kiln-hello/kiln-hello_1.0-1_amd64.deb"]);
    expect(r.generation).toBe(1);
    const served = await get("/repos/tools/pool/main/k/kiln-hello/kiln-hello_1.0-1_amd64.deb");
    expect(Buffer.compare(Buffer.from(served.bytes), bytes)).toBe(0);
    expect(readlinkSync(join(repoDir(dir, "tools"), "current"))).toBe("snapshots/1");

    const again = join(dir, "again.deb");
    writeFileSync(again, bytes);
    const r2 = await repos.publish("tools", [{ path: again, label: "again.deb" }], by);
    expect([r2.added.length, r2.unchanged.length, r2.generation]).toEqual([0, 1, 1]);
  });

  test("a package not newer than the repository's is refused, unless forced", async () => {
    await addRepo("tools");
    await repos.publish("tools", [deb("kiln-hello", "2.0-1")], by);
    const older = await refusal(repos.publish("tools", [deb("kiln-hello", "1.9-1")], by));
    expect(older.code).toBe("REPO_NOT_NEWER");
    expect(older.message).toContain("kiln-hello 1.9-1 (amd64) is not newer than 2.0-1 in repository tools");
    expect(older.message).toContain("--force");
    // Same version, other content (another build of it): refused too, and says so.
    const same = await refusal(
      repos.publish("tools", [deb("kiln-hello", "2.0-1", "amd64", "X-Build: 2\n")], by),
    );
    expect(same.message).toContain("already published with different content");
    // dpkg's order, not the string order: 2.0~rc1 is older than 2.0.
    expect((await refusal(repos.publish("tools", [deb("kiln-hello", "2.0~rc1-1")], by))).code).toBe(
      "REPO_NOT_NEWER",
    );
    expect(await packages("tools")).toEqual(["kiln-hello 2.0-1 amd64"]);
    const forced = await repos.publish("tools", [deb("kiln-hello", "2.0-1", "amd64", "X-Build: 2\n")], {
      ...by,
      force: true,
    });
    expect(forced.added.length).toBe(1);
    const listed = text((await get("/repos/tools/dists/bookworm/main/binary-amd64/Packages")).bytes);
    expect(listed).toContain("X-Build: 2");
    expect(await packages("tools")).toEqual(["kiln-hello 2.0-1 amd64"]);
  });

  test("the newest `keep` versions of each package and arch stay; dropped files leave the store", async () => {
    await addRepo("tools", { keep: 2 });
    for (const v of ["1", "2", "3", "4"]) await repos.publish("tools", [deb("kiln-hello", v)], by);
    await repos.publish("tools", [deb("kiln-hello", "1", "all")], by);
    expect(await packages("tools")).toEqual(["kiln-hello 1 all", "kiln-hello 3 amd64", "kiln-hello 4 amd64"]);
    expect(readdirSync(join(repoDir(dir, "tools"), "packages")).length).toBe(3);
  });

  test("a package of another architecture or format, or not a package, is refused and nothing changes", async () => {
    await addRepo("tools");
    await repos.publish("tools", [deb("kiln-base", "1")], by);
    const before = await getRepo(store.db, "tools");
    const arch = await refusal(repos.publish("tools", [deb("kiln-hello", "1", "arm64")], by));
    expect([arch.code, arch.message]).toEqual([
      "REPO_WRONG_ARCH",
      expect.stringContaining("kiln-hello 1 for arm64; repository tools takes amd64, all"),
    ]);
    const notPackage = join(dir, "notes.deb");
    writeFileSync(notPackage, "just text\n");
    const format = await refusal(repos.publish("tools", [{ path: notPackage, label: "notes.deb" }], by));
    expect([format.code, format.message]).toEqual([
      "REPO_WRONG_FORMAT",
      expect.stringContaining("not a package"),
    ]);
    const hostile = join(dir, "hostile.deb");
    writeFileSync(
      hostile,
      buildDeb({ control: controlText({ name: "../../etc", version: "1", arch: "amd64" }) }),
    );
    expect((await refusal(repos.publish("tools", [{ path: hostile, label: "hostile.deb" }], by))).code).toBe(
      "BAD_PACKAGE",
    );
    // All or nothing: one good package with one refused one publishes neither.
    const good = deb("kiln-good", "1");
    expect((await refusal(repos.publish("tools", [good, deb("kiln-bad", "1", "s390x")], by))).code).toBe(
      "REPO_WRONG_ARCH",
    );
    expect(existsSync(good.path)).toBe(true);
    expect((await getRepo(store.db, "tools"))?.generation).toBe(before?.generation);
    expect(await packages("tools")).toEqual(["kiln-base 1 amd64"]);
    expect(readdirSync(join(repoDir(dir, "tools"), "packages")).length).toBe(1);
    expect(snapshotGenerations(dir, "tools")).toEqual([0, 1]);
  });

  test("an rpm is published with createrepo_c metadata signed for dnf", async () => {
    await addRepo("rpms", { format: "rpm" });
    const [file] = await rpmbuild(
      join(dir, "rpmbuild"),
      helloSpec({ name: "kiln-r-pub", version: "1.0", release: "1", output: "hi" }),
      "-bb",
    );
    const r = await repos.publish("rpms", [{ path: file as string, label: "kiln-r-pub.rpm" }], by);
    expect(r.added.map((p) => p.path)).toEqual(["Packages/k/kiln-r-pub-1.0-1.x86_64.rpm"]);
    const repomd = await get("/repos/rpms/repodata/repomd.xml");
    expect(text(repomd.bytes)).toContain("primary");
    expect(text((await get("/repos/rpms/repodata/repomd.xml.asc")).bytes)).toContain("BEGIN PGP SIGNATURE");
    const wrong = await refusal(repos.publish("rpms", [deb("kiln-hello", "1")], by));
    expect([wrong.code, wrong.message]).toEqual([
      "REPO_WRONG_FORMAT",
      expect.stringContaining("is a Debian package; repository rpms holds rpm packages"),
    ]);
  }, 120_000);
});

describe("concurrency and consistency", () => {
  test("publishes into one repository queue up; two repositories publish side by side", async () => {
    await addRepo("one");
    await addRepo("two");
    const runs = [];
    for (let i = 1; i <= 8; i++) {
      runs.push(repos.publish("one", [deb(`kiln-a${i}`, "1")], by));
      runs.push(repos.publish("two", [deb(`kiln-b${i}`, "1")], by));
    }
    const results = await Promise.all(runs);
    expect(
      results
        .map((r) => r.generation)
        .filter((_, i) => i % 2 === 0)
        .sort((a, b) => a - b),
    ).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect((await packages("one")).length).toBe(8);
    expect((await packages("two")).length).toBe(8);
    expect((await getRepo(store.db, "two"))?.generation).toBe(8);
  });

  test("a reader polling InRelease and the indexes it names never sees a hash that does not match, across 20 publishes", async () => {
    await addRepo("live");
    let done = false;
    let reads = 0;
    const problems: string[] = [];
    const reader = (async () => {
      while (!done) {
        const inRelease = text((await get("/repos/live/dists/bookworm/InRelease")).bytes);
        const listed = [
          ...inRelease.matchAll(/^ ([0-9a-f]{64}) +(\d+) (main\/binary-amd64\/Packages(?:\.gz)?)$/gm),
        ];
        if (listed.length !== 2) problems.push(`InRelease lists ${listed.length} amd64 indexes`);
        for (const [, hash, size, rel] of listed) {
          const byHash = await get(
            `/repos/live/dists/bookworm/${rel!.replace(/[^/]+$/, "")}by-hash/SHA256/${hash}`,
          );
          const got = new Bun.CryptoHasher("sha256").update(byHash.bytes).digest("hex");
          if (byHash.status !== 200 || got !== hash || String(byHash.bytes.length) !== size)
            problems.push(`${rel}: status ${byHash.status}, sha256 ${got}, wanted ${hash}`);
          else if (rel!.endsWith("Packages")) {
            // Every package the index names is there, with the size it says.
            for (const m of text(byHash.bytes).matchAll(/^Filename: (\S+)\nSize: (\d+)$/gm)) {
              const pkg = await get(`/repos/live/${m[1]}`);
              if (pkg.status !== 200 || String(pkg.bytes.length) !== m[2])
                problems.push(`${m[1]}: ${pkg.status}`);
            }
          }
        }
        reads++;
      }
    })();
    for (let i = 1; i <= 20; i++) await repos.publish("live", [deb("kiln-live", String(i))], by);
    // At least one full read after the last publish.
    const after = reads;
    while (reads < after + 2) await Bun.sleep(1);
    done = true;
    await reader;
    expect(problems).toEqual([]);
    expect(reads).toBeGreaterThan(2);
    expect(await packages("live")).toEqual([
      "kiln-live 18 amd64",
      "kiln-live 19 amd64",
      "kiln-live 20 amd64",
    ]);
  }, 60_000);

  test("an index an older InRelease names is served from the older snapshot until the grace period ends", async () => {
    await addRepo("tools");
    await repos.publish("tools", [deb("kiln-hello", "1")], by);
    const old = text((await get("/repos/tools/dists/bookworm/Release")).bytes);
    const oldHash = /^ ([0-9a-f]{64}) +\d+ main\/binary-amd64\/Packages$/m.exec(old)?.[1] as string;
    await repos.publish("tools", [deb("kiln-hello", "2")], by);
    const path = `/repos/tools/dists/bookworm/main/binary-amd64/by-hash/SHA256/${oldHash}`;
    expect(text((await get(path)).bytes)).toContain("Version: 1\n");
    // Replaced long enough ago: the sweep removes it and it is gone.
    for (const n of ["1", "2"])
      utimesSync(join(repoDir(dir, "tools"), "snapshots", n), new Date(0), new Date(0));
    expect(sweepSnapshots(dir, "tools", 60_000)).toBe(2);
    expect((await get(path)).status).toBe(404);
    expect((await get("/repos/tools/dists/bookworm/InRelease")).status).toBe(200);
  });
});

describe("crash recovery", () => {
  test("a snapshot never committed is removed and `current` follows the store's generation", async () => {
    await addRepo("tools");
    await repos.publish("tools", [deb("kiln-hello", "1")], by);
    await repos.publish("tools", [deb("kiln-hello", "2")], by);
    const root = repoDir(dir, "tools");
    // A publish cut short after its snapshot was renamed in, before the commit; another mid-build;
    // and a switch cut short: `current` still at 1 while the store says 2.
    mkdirSync(join(root, "snapshots", "3", "dists"), { recursive: true });
    mkdirSync(join(root, "snapshots", ".building-4"), { recursive: true });
    rmSync(join(root, "current"));
    const { symlinkSync } = await import("node:fs");
    symlinkSync("snapshots/1", join(root, "current"));
    // And the files of a repository whose row is gone.
    mkdirSync(join(dir, "repos", "gone", "snapshots"), { recursive: true });
    const fresh = createRepoService(ctx);
    await fresh.recover();
    await fresh.close();
    expect(snapshotGenerations(dir, "tools")).toEqual([0, 1, 2]);
    expect(existsSync(join(root, "snapshots", ".building-4"))).toBe(false);
    expect(currentGeneration(dir, "tools")).toBe(2);
    expect(existsSync(join(dir, "repos", "gone"))).toBe(false);
  });

  test("a committed snapshot that went missing is written again from the stored packages", async () => {
    await addRepo("tools");
    await repos.publish("tools", [deb("kiln-hello", "1")], by);
    rmSync(join(repoDir(dir, "tools"), "snapshots", "1"), { recursive: true });
    const fresh = createRepoService(ctx);
    await fresh.recover();
    await fresh.close();
    expect(currentGeneration(dir, "tools")).toBe(1);
    expect(text((await get("/repos/tools/dists/bookworm/main/binary-amd64/Packages")).bytes)).toContain(
      "Package: kiln-hello\n",
    );
  });
});

import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
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
 * Releases end to end through the compiled binary: a succeeded job's artifact promoted under a tag is
 * served at /releases/TAG/ with a SHA256SUMS that `sha256sum -c` accepts, never changes, and survives a
 * restart; failed jobs, taken tags, hostile tags and the wrong token are refused and leave nothing.
 */

describe("releases", () => {
  const dir = tempDir();
  let m: Master;
  let good = 0;
  let bad = 0;
  const start = () =>
    startMaster(dir.path, {
      role: "up",
      name: "up",
      env: { KILN_WORKER_RUNNER: "process", KILN_WORKER_NAME: "rel", KILN_WORKER_CAPACITY: "2" },
    });

  afterAll(async () => {
    await stopAll();
    dir[Symbol.dispose]();
  });

  test("a succeeded job's artifact becomes a release with its checksum", async () => {
    m = await start();
    good = await submitJob(m, {
      command: [
        "sh",
        "-c",
        'head -c 3000000 /dev/urandom > "$KILN_OUT/tool.bin"; mkdir "$KILN_OUT/doc"; echo hi > "$KILN_OUT/doc/README"',
      ],
    });
    bad = await submitJob(m, { command: ["sh", "-c", 'echo x > "$KILN_OUT/tool.bin"; exit 3'] });
    expect((await waitJob(m, good)).state).toBe("succeeded");
    expect((await waitJob(m, bad)).state).toBe("failed");

    const r = await m.cli(["promote", String(good), "tool.bin", "--release", "v1.0"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("release v1.0: tool.bin");
    const stored = readFileSync(join(m.data, "releases", "v1.0", "tool.bin"));
    const res = await fetch(`${m.url}/releases/v1.0/tool.bin`);
    expect(res.status).toBe(200);
    const bytes = new Uint8Array(await res.arrayBuffer());
    expect(bytes.length).toBe(3_000_000);
    expect(Buffer.compare(Buffer.from(bytes), stored)).toBe(0);
    const sha = new Bun.CryptoHasher("sha256").update(bytes).digest("hex");
    expect(res.headers.get("x-kiln-sha256")).toBe(sha);

    // The checksums file verifies the download with the standard tool.
    const sums = await (await fetch(`${m.url}/releases/v1.0/SHA256SUMS`)).text();
    expect(sums).toBe(`${sha}  tool.bin\n`);
    const check = tempDir();
    await Bun.write(join(check.path, "tool.bin"), bytes);
    await Bun.write(join(check.path, "SHA256SUMS"), sums);
    const verified = Bun.spawnSync(["sha256sum", "-c", "SHA256SUMS"], { cwd: check.path });
    expect(verified.exitCode).toBe(0);
    check[Symbol.dispose]();

    // A `dir/file` artifact is released under its last part.
    expect((await m.cli(["promote", String(good), "doc/README", "--release", "docs-1"])).code).toBe(0);
    expect(await (await fetch(`${m.url}/releases/docs-1/README`)).text()).toBe("hi\n");
  });

  test("a tag is never reused, and a refused promotion changes nothing", async () => {
    const again = await m.cli(["promote", String(good), "doc/README", "--release", "v1.0"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain("release v1.0 already exists");
    expect(readdirSync(join(m.data, "releases", "v1.0")).sort()).toEqual(["SHA256SUMS", "tool.bin"]);

    const failed = await m.cli(["promote", String(bad), "tool.bin", "--release", "v0.9"]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain(`job ${bad} is failed`);

    const missing = await m.cli(["promote", String(good), "nope.bin", "--release", "v0.8"]);
    expect(missing.stderr).toContain(`job ${good} has no artifact nope.bin`);

    for (const tag of ["../x", "V1", ".hidden", "a/b", "x".repeat(64)]) {
      const r = await m.cli(["promote", String(good), "tool.bin", "--release", tag]);
      expect([r.code, r.stderr]).toEqual([2, expect.stringContaining("is not a valid name")]);
    }
    const usage = await m.cli(["promote", String(good), "tool.bin"]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("--release TAG");

    expect(readdirSync(join(m.data, "releases")).sort()).toEqual(["docs-1", "v1.0"]);
  });

  test("a viewer cannot promote; another project's submitter cannot see the job", async () => {
    const token = async (args: string[]) =>
      JSON.parse((await m.cli(["token", "create", ...args, "--json"])).stdout).token as string;
    const viewer = await token(["--role", "viewer"]);
    const other = await token(["--role", "submitter", "--project", "other"]);
    const asViewer = await m.cli(["promote", String(good), "tool.bin", "--release", "v2"], {
      KILN_TOKEN: viewer,
    });
    expect(asViewer.code).toBe(1);
    expect(asViewer.stderr).toContain("needs the submitter role");
    const asOther = await m.cli(["promote", String(good), "tool.bin", "--release", "v2"], {
      KILN_TOKEN: other,
    });
    expect(asOther.stderr).toContain(`no job ${good}`);
    expect((await m.cli(["releases", "--json"], { KILN_TOKEN: other })).stdout.trim()).toBe("[]");
    expect(existsSync(join(m.data, "releases", "v2"))).toBe(false);
  });

  test("releases are listed, survive a restart, and a crash's leftovers are swept", async () => {
    const list = JSON.parse((await m.cli(["releases", "--json"])).stdout) as {
      tag: string;
      sha256: string;
    }[];
    expect(list.map((r) => r.tag).sort()).toEqual(["docs-1", "v1.0"]);
    const shown = await m.cli(["releases", "v1.0"]);
    expect(shown.stdout).toContain("/releases/v1.0/SHA256SUMS");

    await stopAll();
    // What a promotion cut short by a crash leaves: a temporary directory, and a directory with no row.
    mkdirSync(join(m.data, "releases", ".v3.partial"));
    mkdirSync(join(m.data, "releases", "v3"));
    m = await start();
    await waitFor("the master after a restart", async () => (await fetch(`${m.url}/readyz`)).ok);
    expect(existsSync(join(m.data, "releases", ".v3.partial"))).toBe(false);
    expect((await fetch(`${m.url}/releases/v1.0/tool.bin`)).status).toBe(200);
    expect((await fetch(`${m.url}/releases/v3/`)).status).toBe(404);
    // The tag the crash left half-made is free: promoting to it works.
    expect((await m.cli(["promote", String(good), "tool.bin", "--release", "v3"])).code).toBe(0);
    expect((await fetch(`${m.url}/releases/v3/tool.bin`)).status).toBe(200);
    // Only a release's own two names are served.
    for (const path of [
      "/releases/v1.0/..%2Fv3%2Ftool.bin",
      "/releases/v1.0/other",
      "/releases/..%2Fadmin.token/x",
    ])
      expect((await fetch(`${m.url}${path}`)).status).toBeGreaterThanOrEqual(400);
  });
});

describe.skipIf(process.getuid?.() !== 0)("a release on a full disk", () => {
  const dir = tempDir("kiln-rel-full-", "/var/tmp");
  const mnt = join(dir.path, "small");

  afterAll(async () => {
    await stopAll();
    if (existsSync(mnt)) Bun.spawnSync(["umount", "-l", mnt]);
    dir[Symbol.dispose]();
  });

  test("is a hard link to the stored blob, and a full disk refuses it with 507 and leaves nothing", async () => {
    mkdirSync(mnt);
    const mount = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", mnt]);
    expect(mount.exitCode).toBe(0);
    const m = await startMaster(mnt, {
      role: "up",
      name: "up",
      env: { KILN_WORKER_RUNNER: "process", KILN_WORKER_NAME: "rel-full" },
    });
    const id = await submitJob(m, {
      command: ["sh", "-c", 'head -c 4000000 /dev/urandom > "$KILN_OUT/big.bin"'],
    });
    expect((await waitJob(m, id)).state).toBe("succeeded");
    expect((await m.cli(["promote", String(id), "big.bin", "--release", "r1"])).code).toBe(0);
    // No copy: the release's file is the blob's inode (a 2 GiB image costs no second 2 GiB).
    const file = join(m.data, "releases", "r1", "big.bin");
    const sha = readFileSync(join(m.data, "releases", "r1", "SHA256SUMS"), "utf8").split(" ")[0]!;
    const blob = join(m.data, "artifacts", "sha256", sha.slice(0, 2), sha);
    expect(statSync(file).ino).toBe(statSync(blob).ino);

    // Fill the disk to the last block.
    const fill = join(mnt, "fill");
    Bun.spawnSync(["dd", "if=/dev/zero", `of=${fill}`, "bs=1M"], { stderr: "ignore" });
    Bun.spawnSync([
      "sh",
      "-c",
      `i=0; while dd if=/dev/zero of=${fill}.$i bs=4k count=1 2>/dev/null; do i=$((i+1)); done`,
    ]);
    const full = await m.cli(["promote", String(id), "big.bin", "--release", "r2"]);
    expect([full.code, full.stderr]).toEqual([1, expect.stringContaining("disk is full")]);
    expect(readdirSync(join(m.data, "releases")).sort()).toEqual(["r1"]);
    expect((await fetch(`${m.url}/releases/r2/big.bin`)).status).toBe(404);

    // Space returns: the same promotion works.
    Bun.spawnSync(["sh", "-c", `rm -f ${fill} ${fill}.*`]);
    expect((await m.cli(["promote", String(id), "big.bin", "--release", "r2"])).code).toBe(0);
    expect((await fetch(`${m.url}/releases/r2/big.bin`)).status).toBe(200);
  }, 120_000);
});

import { afterAll, beforeAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readTar } from "./tar.ts";

/*
 * The tar reader against GNU tar's own archives in each format it writes (gnu, pax, ustar, v7): names as
 * tar stores them (long ones too), types, sizes and the data of the members kept.
 */

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-tar-"));
  const tree = join(dir, "tree");
  mkdirSync(join(tree, "sub"), { recursive: true });
  writeFileSync(join(tree, "control"), "Package: x\n");
  writeFileSync(join(tree, "sub", `${"long-name-".repeat(15)}end`), "deep\n");
  symlinkSync("/etc/passwd", join(tree, "link"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const fail = (what: string) => new Error(what);
const read = (
  bytes: Uint8Array,
  keep = (_: { name: string }) => true,
  maxMember = 1 << 20,
  maxTotal = 1 << 24,
) => readTar(new Blob([bytes]).stream(), { keep, maxMember, maxTotal, fail });

test("every format GNU tar writes reads with the names, types and data tar stored", async () => {
  for (const format of ["gnu", "pax", "ustar"]) {
    const out = join(dir, `${format}.tar`);
    const args = [
      "tar",
      `--format=${format}`,
      "-C",
      join(dir, "tree"),
      "-cf",
      out,
      "./control",
      "./sub",
      "./link",
    ];
    const made = Bun.spawnSync(args, { stderr: "pipe" });
    // ustar cannot hold the 160-character name; GNU tar says so and leaves it out.
    if (format !== "ustar") expect(made.exitCode).toBe(0);
    const entries = await read(new Uint8Array(readFileSync(out)));
    const byName = new Map(entries.map((e) => [e.name, e]));
    expect(new TextDecoder().decode(byName.get("control")?.data)).toBe("Package: x\n");
    expect(byName.get("link")).toMatchObject({ type: "2", linkname: "/etc/passwd", size: 0 });
    expect(byName.get("sub")?.type).toBe("5");
    if (format !== "ustar")
      expect(new TextDecoder().decode(byName.get(`sub/${"long-name-".repeat(15)}end`)?.data)).toBe("deep\n");
  }
});

test("a damaged header, a cut archive and the limits are refused by the caller's error", async () => {
  const out = join(dir, "plain.tar");
  Bun.spawnSync(["tar", "-C", join(dir, "tree"), "-cf", out, "./control"]);
  const whole = new Uint8Array(readFileSync(out));
  const damaged = whole.slice();
  damaged[10] = (damaged[10] as number) ^ 0xff;
  await expect(read(damaged)).rejects.toThrow(/checksum does not match/);
  await expect(read(whole.subarray(0, 600))).rejects.toThrow(/truncated/);
  await expect(read(whole, () => true, 4)).rejects.toThrow(/control is 11 bytes, more than the 4 allowed/);
  await expect(read(whole, () => true, 1 << 20, 512)).rejects.toThrow(/larger than 512 bytes/);
  // Not kept: no limit on its size, and no data.
  expect((await read(whole, () => false, 4))[0]?.data).toBeUndefined();
});

import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { kindOf, kindOfFile } from "./kind.ts";

/*
 * Kinds come from content. Real files where Debian's tools make them here (dpkg-deb, rpmbuild,
 * mkfs.ext4); the other formats as their headers are laid out on disk, each beside a near miss.
 */

const dir = mkdtempSync(join(tmpdir(), "kiln-kind-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const run = (cmd: string[], cwd = dir) => {
  const p = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${p.stderr.toString()}`);
};
const bytes = (size: number, put: [number, number[] | string][]) => {
  const b = new Uint8Array(size);
  for (const [at, v] of put) b.set(typeof v === "string" ? new TextEncoder().encode(v) : v, at);
  return b;
};

describe("an artifact's kind", () => {
  test("a package built by dpkg-deb is a deb, whatever it is called; an ar archive of other members is not", async () => {
    const root = join(dir, "pkg");
    mkdirSync(join(root, "DEBIAN"), { recursive: true });
    writeFileSync(
      join(root, "DEBIAN", "control"),
      "Package: kiln-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: Kiln <kiln@example.invalid>\nDescription: probe\n",
    );
    run(["dpkg-deb", "--build", "--root-owner-group", root, join(dir, "called-anything.bin")]);
    expect(await kindOfFile(join(dir, "called-anything.bin"))).toBe("deb");
    writeFileSync(join(dir, "member"), "x");
    run(["ar", "rc", join(dir, "other.deb"), "member"]);
    expect(await kindOfFile(join(dir, "other.deb"))).toBe("other");
  });

  test("a package built by rpmbuild is an rpm", async () => {
    const top = join(dir, "rpm");
    mkdirSync(join(top, "SPECS"), { recursive: true });
    writeFileSync(
      join(top, "SPECS", "probe.spec"),
      "Name: kiln-probe\nVersion: 1.0\nRelease: 1\nSummary: probe\nLicense: none\nBuildArch: noarch\n%description\nprobe\n%files\n",
    );
    run(["rpmbuild", "-bb", "--define", `_topdir ${top}`, join(top, "SPECS", "probe.spec")]);
    const rpm = join(top, "RPMS", "noarch", readdirSync(join(top, "RPMS", "noarch"))[0]!);
    expect(await kindOfFile(rpm)).toBe("rpm");
  }, 60_000);

  test("an ext4 file system made by mkfs.ext4 is an image", async () => {
    const img = join(dir, "fs.txt");
    run(["truncate", "-s", "4M", img]);
    run(["mkfs.ext4", "-q", "-F", img]);
    expect(await kindOfFile(img)).toBe("image");
  });

  test("squashfs, qcow2, ISO 9660, GPT and MBR disks are images by their magic", () => {
    expect(kindOf(bytes(4096, [[0, "hsqs"]]))).toBe("image");
    expect(kindOf(bytes(4096, [[0, [0x51, 0x46, 0x49, 0xfb]]]))).toBe("image");
    expect(kindOf(bytes(0x8800, [[0x8001, "CD001"]]))).toBe("image");
    expect(kindOf(bytes(1024, [[512, "EFI PART"]]))).toBe("image");
    expect(kindOf(bytes(8192, [[4096, "EFI PART"]]))).toBe("image");
    // One bootable partition of type 0x83 (Linux) and the signature.
    expect(
      kindOf(
        bytes(512, [
          [446, [0x80, 0, 0, 0, 0x83]],
          [510, [0x55, 0xaa]],
        ]),
      ),
    ).toBe("image");
  });

  test("near misses are other: a signature without a partition table, a truncated header, text named .iso", () => {
    expect(kindOf(bytes(512, [[510, [0x55, 0xaa]]]))).toBe("other");
    expect(
      kindOf(
        bytes(512, [
          [446, [0x12]],
          [450, [0x83]],
          [510, [0x55, 0xaa]],
        ]),
      ),
    ).toBe("other");
    expect(kindOf(new TextEncoder().encode("QFI"))).toBe("other");
    expect(kindOf(new TextEncoder().encode("!<arch>\ndebian-binaryX"))).toBe("other");
    expect(kindOf(new Uint8Array(0))).toBe("other");
    expect(kindOf(new TextEncoder().encode("CD001 is just text here"))).toBe("other");
  });
});

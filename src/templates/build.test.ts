import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { aptHosts, egressOf, readInTree } from "./build.ts";

// What a build step may reach is read from the tree on the host, so these files are hostile input.
let dir: string;
let tree: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-c-build-"));
  tree = join(dir, "root");
  mkdirSync(join(tree, "etc/apt/sources.list.d"), { recursive: true });
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test("a mirror URL becomes its host, with the port only when it is not the scheme's own", () => {
  expect(egressOf("http://deb.debian.org/debian")).toBe("deb.debian.org");
  expect(egressOf("https://mirror.example:8443/debian/")).toBe("mirror.example:8443");
  expect(egressOf("http://[::1]:8080/x")).toBe("::1:8080");
  expect(egressOf("file:///srv/mirror")).toBeNull();
  expect(egressOf("not a url")).toBeNull();
});

test("the egress of a tree is every http(s) host its one-line and deb822 apt sources name", () => {
  writeFileSync(
    join(tree, "etc/apt/sources.list"),
    [
      "# deb http://commented.example/debian bookworm main",
      "deb http://deb.debian.org/debian bookworm main",
      "deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] https://apt.example:8443/repo stable main",
      "deb-src http://deb.debian.org/debian bookworm main",
      "deb file:///srv/local ./",
    ].join("\n"),
  );
  writeFileSync(
    join(tree, "etc/apt/sources.list.d/debian.sources"),
    "Types: deb\nURIs: http://security.debian.org/debian-security https://other.example/debian\nSuites: bookworm-security\n",
  );
  writeFileSync(join(tree, "etc/apt/sources.list.d/ignored.txt"), "deb http://ignored.example/ x main\n");
  expect(aptHosts(tree)).toEqual([
    "apt.example:8443",
    "deb.debian.org",
    "other.example",
    "security.debian.org",
  ]);
});

test("a source file that is a link, or sits under a linked directory, is not read on the host", () => {
  const outside = join(dir, "host-sources");
  writeFileSync(outside, "deb http://from-the-host.example/debian bookworm main\n");
  symlinkSync(outside, join(tree, "etc/apt/sources.list"));
  expect(aptHosts(tree)).toEqual([]);
  expect(readInTree(tree, "etc/apt/sources.list")).toBeNull();
  rmSync(join(tree, "etc"), { recursive: true });
  mkdirSync(join(dir, "host-etc/apt"), { recursive: true });
  writeFileSync(join(dir, "host-etc/apt/sources.list"), "deb http://from-the-host.example/debian x main\n");
  symlinkSync(join(dir, "host-etc"), join(tree, "etc"));
  expect(aptHosts(tree)).toEqual([]);
  expect(readInTree(tree, "etc/apt/sources.list")).toBeNull();
});

test("readInTree reads plain files and refuses fifos, directories and missing paths", () => {
  mkdirSync(join(tree, "debootstrap"));
  writeFileSync(join(tree, "debootstrap/debootstrap.log"), "I: Retrieving InRelease\n");
  expect(readInTree(tree, "debootstrap/debootstrap.log")).toBe("I: Retrieving InRelease\n");
  Bun.spawnSync(["mkfifo", join(tree, "debootstrap/fifo")]);
  expect(readInTree(tree, "debootstrap/fifo")).toBeNull();
  expect(readInTree(tree, "debootstrap")).toBeNull();
  expect(readInTree(tree, "nothing/here")).toBeNull();
});

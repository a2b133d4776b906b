// Kiln's version order against the package managers' own: every generated pair is compared by Kiln and by
// the real dpkg binary (`dpkg --compare-versions`) or by rpm's library (python3-rpm's `rpm.labelCompare`).
// The generator is seeded, so a failure names pairs that reproduce; a pair that once disagreed stays below
// as a fixed row.
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { compareDebVersions, compareRpmVersions, rpmvercmp, validDebVersion } from "./version.ts";

// python3-rpm is built for Debian's own interpreter, not for whatever `python3` comes first on PATH.
const SYSTEM_PYTHON = "/usr/bin/python3";

// A small seeded generator (mulberry32): the same seed gives the same pairs on every machine.
function random(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rand = () => number;
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;

// Pieces chosen to hit every branch of both algorithms: leading zeros, numbers longer than 64 bits, letters
// of both cases, each separator, tildes and carets alone and doubled, and empty segments between separators.
const DIGITS = ["0", "00", "01", "007", "1", "2", "9", "10", "11", "100", "123456789012345678901234"];
const LETTERS = ["a", "b", "z", "A", "Z", "rc", "rc1", "beta", "alpha", "git", "pre", "post"];

function debToken(r: Rand, inRevision: boolean): string {
  const seps = inRevision ? [".", "+", "~", "~~"] : [".", "+", "~", "~~", "-", ":"];
  const x = r();
  if (x < 0.4) return pick(r, DIGITS);
  if (x < 0.7) return pick(r, LETTERS);
  return pick(r, seps);
}

function debVersion(r: Rand): string {
  const epoch = r() < 0.3 ? `${pick(r, ["0", "1", "2", "10", "00"])}:` : "";
  let upstream = pick(r, DIGITS);
  for (let n = Math.floor(r() * 5); n > 0; n--) upstream += debToken(r, false);
  // A colon in the upstream version is only allowed after an epoch, a hyphen only before a revision.
  if (!epoch) upstream = upstream.replaceAll(":", ".");
  let revision = "";
  if (r() < 0.6) {
    for (let n = 1 + Math.floor(r() * 3); n > 0; n--) revision += debToken(r, true);
  } else {
    upstream = upstream.replaceAll("-", "+");
  }
  return `${epoch}${upstream}${revision ? `-${revision}` : ""}`;
}

function rpmToken(r: Rand): string {
  const x = r();
  if (x < 0.35) return pick(r, DIGITS);
  if (x < 0.6) return pick(r, LETTERS);
  return pick(r, [".", ".", "_", "+", "%", "~", "~", "^", "^", "~~", "^^", "..", "é"]);
}

function rpmString(r: Rand, min: number): string {
  let s = "";
  for (let n = min + Math.floor(r() * 6); n > 0; n--) s += rpmToken(r);
  return s;
}

// A second version near the first, so comparisons run deep instead of stopping at the first character.
function mutate(r: Rand, v: string, token: () => string): string {
  const x = r();
  if (x < 0.1) return v;
  if (x < 0.3) return v + token();
  if (x < 0.45) return v.replace(/(\d+)/, (d) => (r() < 0.5 ? `0${d}` : String(BigInt(d) + 1n)));
  if (x < 0.6) return v.slice(0, Math.max(1, Math.floor(r() * v.length)));
  if (x < 0.75) return v.replace(/[.+_]/, () => pick(r, [".", "+", "_", "~", "^"]));
  return v + pick(r, ["~", "^", "~rc1", "^1", ".0", "a", "0"]);
}

// dpkg's own comparison, batched: a few lines of C linked against libdpkg (Debian package libdpkg-dev),
// the library the dpkg binary itself is built from, so thousands of pairs cost one process instead of
// thousands of `dpkg --compare-versions` starts (about 30 ms each on a busy host). The test below checks
// that this harness and the dpkg binary agree on a sample, so it cannot drift from dpkg unnoticed.
const LIBDPKG_HARNESS = `#define LIBDPKG_VOLATILE_API 1
#include <stdio.h>
#include <string.h>
#include <dpkg/dpkg.h>
#include <dpkg/dpkg-db.h>
#include <dpkg/version.h>
/* Reads "A B" lines; prints -1, 0 or 1, or "bad" when dpkg refuses either version (error or warning). */
int main(void) {
  static char line[65536];
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\\n")] = 0;
    char *b = strchr(line, ' ');
    if (!b) return 2;
    *b++ = 0;
    struct dpkg_version x, y;
    struct dpkg_error e = DPKG_ERROR_INIT, f = DPKG_ERROR_INIT;
    if (parseversion(&x, line, &e) || e.type != DPKG_MSG_NONE || parseversion(&y, b, &f) || f.type != DPKG_MSG_NONE) {
      puts("bad");
      continue;
    }
    int c = dpkg_version_compare(&x, &y);
    puts(c < 0 ? "-1" : c > 0 ? "1" : "0");
  }
  return 0;
}
`;

let harness: Promise<string> | undefined;
let harnessDir: string | undefined;
afterAll(() => {
  if (harnessDir) rmSync(harnessDir, { recursive: true, force: true });
});

// Compiles the harness once per run into a temp directory (gcc and libdpkg-dev, installed by scripts/test).
function libdpkgHarness(): Promise<string> {
  harness ??= (async () => {
    const dir = mkdtempSync(join(tmpdir(), "kiln-r-dpkg-"));
    harnessDir = dir;
    writeFileSync(join(dir, "cmp.c"), LIBDPKG_HARNESS);
    const cc = Bun.spawnSync(["gcc", "-O1", "-o", join(dir, "cmp"), join(dir, "cmp.c"), "-ldpkg", "-lmd"]);
    if (cc.exitCode !== 0) {
      throw new Error(
        `cannot build the libdpkg harness (install gcc and libdpkg-dev): ${cc.stderr.toString()}`,
      );
    }
    return join(dir, "cmp");
  })();
  return harness;
}

// Orders pairs with libdpkg: -1, 0, 1, or NaN where dpkg refuses a version.
async function libdpkgCompare(pairs: [string, string][]): Promise<number[]> {
  const proc = Bun.spawn([await libdpkgHarness()], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  proc.stdin.write(pairs.map(([a, b]) => `${a} ${b}\n`).join(""));
  await proc.stdin.end();
  const out = await new Response(proc.stdout).text();
  if ((await proc.exited) !== 0) throw new Error("the libdpkg harness failed");
  return out.trim().split("\n").map(Number);
}

// The dpkg binary itself, once per pair from a shell loop (it has no batch mode). Returns -1, 0 or 1 per
// pair, NaN where dpkg said anything on stderr (it warns, or fails, on bad syntax).
async function dpkgCompare(pairs: [string, string][]): Promise<number[]> {
  const script = `while read -r a b; do
    if err=$(dpkg --compare-versions "$a" lt "$b" 2>&1); then r=-1
    elif err=$(dpkg --compare-versions "$a" eq "$b" 2>&1); then r=0
    else r=1; fi
    [ -z "$err" ] || r=bad
    echo "$r"
  done`;
  const proc = Bun.spawn(["bash", "-c", script], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
  proc.stdin.write(pairs.map(([a, b]) => `${a} ${b}\n`).join(""));
  await proc.stdin.end();
  const out = await new Response(proc.stdout).text();
  if ((await proc.exited) !== 0) throw new Error("the dpkg loop failed");
  return out.trim().split("\n").map(Number);
}

type Evr = [string | null, string, string];

// One python process compares every pair with rpm's labelCompare (epoch, version, release; a null epoch
// counts as 0, as rpm does for a package without one).
async function rpmCompare(pairs: [Evr, Evr][]): Promise<number[]> {
  if (!existsSync(SYSTEM_PYTHON)) throw new Error(`${SYSTEM_PYTHON} is missing: install python3-rpm`);
  const code = `import json, sys
import rpm
pairs = json.load(sys.stdin)
print(json.dumps([rpm.labelCompare(tuple(a), tuple(b)) for a, b in pairs]))`;
  const proc = Bun.spawn([SYSTEM_PYTHON, "-c", code], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  proc.stdin.write(JSON.stringify(pairs));
  await proc.stdin.end();
  const [out, err, exit] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (exit !== 0) throw new Error(`python3-rpm failed (install the Debian package python3-rpm): ${err}`);
  return JSON.parse(out) as number[];
}

const evrText = ([e, v, r]: Evr) => `${e === null ? "" : `${e}:`}${v}${r ? `-${r}` : ""}`;

// Pairs that name a rule outright; each runs every time. No generated pair has disagreed with dpkg or rpm
// so far; the one disagreement found (validDebVersion took dpkg's refused caret, "1^2") is a fixed
// candidate in the validity test below.
const DEB_ROWS: [string, string, number][] = [
  ["1.0~rc1", "1.0", -1],
  ["1.0", "1.0+b1", -1],
  ["1:0.9", "2.0", 1],
  ["1.01", "1.1", 0],
  ["0:1.0", "1.0", 0],
  ["1.0-1", "1.0-1~bpo1", 1],
  ["1.0a", "1.0+", -1],
  ["1.0", "1.0-0", 0],
  ["2:1.0-1", "2:1.0-1", 0],
  ["1.0~~", "1.0~~a", -1],
];
const RPM_ROWS: [string, string, number][] = [
  ["1.0~rc1-1", "1.0-1", -1],
  ["1.0^git1-1", "1.0-1", 1],
  ["1.0^git1-1", "1.0.1-1", -1],
  ["1.0a-1", "1.0-1", 1],
  ["1.0a-1", "1.0.1-1", -1],
  ["1.010-1", "1.10-1", 0],
  ["1.0_1-1", "1.0.1-1", 0],
  ["1:1.0-1", "2.0-1", 1],
  ["1.0-1.el9", "1.0-1.el10", -1],
];

describe("Debian version order", () => {
  test("the fixed rows order as the dpkg binary orders them", async () => {
    const order = await dpkgCompare(DEB_ROWS.map(([a, b]) => [a, b]));
    for (const [i, [a, b, want]] of DEB_ROWS.entries()) {
      expect({ a, b, kiln: compareDebVersions(a, b) }).toEqual({ a, b, kiln: want });
      expect({ a, b, dpkg: order[i] }).toEqual({ a, b, dpkg: want });
    }
  });

  test("validDebVersion accepts exactly the versions dpkg accepts", async () => {
    const r = random(7);
    const candidates = [
      "1^2",
      "1.0-",
      "a1",
      "1_2",
      ":1",
      "1:",
      "1:-1",
      "0:1",
      "1:2:3",
      "1-2-3",
      "1-a:b",
      "99999999999:1",
    ];
    for (let n = 0; n < 3000; n++) {
      let v = debVersion(r);
      // Break a third of them in one place: a character dpkg refuses, a missing part, a letter in front.
      if (r() < 0.33)
        v = pick(r, [`${v}^`, `${v}_x`, `a${v}`, `${v}-`, `x:${v}`, `${v}-1:2`, `1:${v}-a^b`, `:${v}`]);
      candidates.push(v);
    }
    const verdict = await libdpkgCompare(candidates.map((v) => [v, v]));
    const disagree = candidates.filter((v, i) => validDebVersion(v) !== (verdict[i] === 0));
    expect(disagree).toEqual([]);
    expect(verdict.filter(Number.isNaN).length).toBeGreaterThan(500);
    // The dpkg binary gives the same verdicts on the first 60 (the harness is dpkg's library, checked).
    const sample = candidates.slice(0, 60);
    const binary = await dpkgCompare(sample.map((v) => [v, v]));
    expect(binary.map((x) => x === 0)).toEqual(sample.map(validDebVersion));
  }, 120_000);

  test("20,000 generated pairs order exactly as dpkg orders them", async () => {
    const r = random(20261201);
    const pairs: [string, string][] = [];
    while (pairs.length < 20_000) {
      const a = debVersion(r);
      const b = r() < 0.8 ? mutate(r, a, () => debToken(r, false)) : debVersion(r);
      // Only versions dpkg accepts: it refuses to compare bad syntax (a mutation can make a bad one).
      if (validDebVersion(a) && validDebVersion(b)) pairs.push([a, b]);
    }
    const order = await libdpkgCompare(pairs);
    expect(order.length).toBe(pairs.length);
    const disagree = pairs
      .map(([a, b], i) => ({ a, b, dpkg: order[i], kiln: compareDebVersions(a, b) }))
      .filter((x) => x.dpkg !== x.kiln);
    expect(disagree).toEqual([]);
    // The generator must produce every outcome, or the comparison proves little.
    for (const want of [-1, 0, 1]) expect(order.filter((x) => x === want).length).toBeGreaterThan(1000);
    // And the dpkg binary orders a sample of them the same way.
    const sample = pairs.slice(0, 80);
    expect(await dpkgCompare(sample)).toEqual(order.slice(0, 80));
  }, 120_000);
});

describe("RPM version order", () => {
  test("the fixed rows order as rpm orders them", async () => {
    const split = (s: string): Evr => {
      const m = /^(?:(\d+):)?(.*)-([^-]*)$/.exec(s) as RegExpExecArray;
      return [m[1] ?? null, m[2] as string, m[3] as string];
    };
    const order = await rpmCompare(RPM_ROWS.map(([a, b]) => [split(a), split(b)]));
    for (const [i, [a, b, want]] of RPM_ROWS.entries()) {
      expect({ a, b, kiln: compareRpmVersions(a, b) }).toEqual({ a, b, kiln: want });
      expect({ a, b, rpm: order[i] }).toEqual({ a, b, rpm: want });
    }
  });

  test("rpmvercmp orders 3,000 generated strings (empty, separators only, tildes, carets) as rpm does", async () => {
    const r = random(4242);
    const pairs: [string, string][] = [
      ["", ""],
      ["", "1"],
      ["~", ""],
      ["^", ""],
      ["..", "."],
      ["1..2", "1.2"],
      ["~~", "~"],
      ["^^", "^"],
    ];
    while (pairs.length < 3000) {
      const a = rpmString(r, 0);
      pairs.push([a, r() < 0.8 ? mutate(r, a, () => rpmToken(r)) : rpmString(r, 0)]);
    }
    // Same epoch and version on both sides, so labelCompare's answer is rpmvercmp's on the releases (the
    // release, unlike the version, may be empty there).
    const order = await rpmCompare(pairs.map(([a, b]) => [["0", "1", a] as Evr, ["0", "1", b] as Evr]));
    const disagree = pairs
      .map(([a, b], i) => ({ a, b, rpm: order[i], kiln: rpmvercmp(a, b) }))
      .filter((x) => x.rpm !== x.kiln);
    expect(disagree).toEqual([]);
    for (const want of [-1, 0, 1]) expect(order.filter((x) => x === want).length).toBeGreaterThan(150);
  }, 120_000);

  test("3,000 generated epoch:version-release pairs order as rpm.labelCompare orders them", async () => {
    const r = random(99);
    const evr = (): Evr => [
      r() < 0.3 ? pick(r, ["0", "1", "2", "10", "00"]) : null,
      pick(r, DIGITS) + rpmString(r, 0),
      rpmString(r, 1),
    ];
    const near = ([e, v, rel]: Evr): Evr => {
      const x = r();
      if (x < 0.2) return [r() < 0.5 ? null : pick(r, ["0", "1", "3"]), v, rel];
      if (x < 0.6) return [e, mutate(r, v, () => rpmToken(r)), rel];
      return [e, v, mutate(r, rel, () => rpmToken(r)) || "1"];
    };
    const pairs: [Evr, Evr][] = [];
    while (pairs.length < 3000) {
      const a = evr();
      const b = r() < 0.8 ? near(a) : evr();
      // Kiln reads an EVR from text: a hyphen or colon inside the version or release would split elsewhere,
      // and rpm itself forbids both there.
      if ([a, b].some(([, v, rel]) => /[-:]/.test(v + rel) || rel === "")) continue;
      pairs.push([a, b]);
    }
    const order = await rpmCompare(pairs);
    const disagree = pairs
      .map(([a, b], i) => ({ a: evrText(a), b: evrText(b), rpm: order[i] }))
      .map((x) => ({ ...x, kiln: compareRpmVersions(x.a, x.b) }))
      .filter((x) => x.rpm !== x.kiln);
    expect(disagree).toEqual([]);
    for (const want of [-1, 0, 1]) expect(order.filter((x) => x === want).length).toBeGreaterThan(150);
  }, 120_000);
});

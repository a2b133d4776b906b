import { describe, expect, test } from "bun:test";
import {
  artifactNameProblem,
  checkName,
  checkReleaseArtifact,
  isArtifactName,
  isName,
  nameSchema,
} from "./names.ts";

describe("artifact names", () => {
  test("plain names and dir/file names are accepted", () => {
    for (const n of ["a", "blob.bin", "v1.2+deb_3-x", "d/f.txt", "a/b/c/d.tar.gz", `${"x".repeat(201)}`])
      expect(`${n}: ${artifactNameProblem(n)}`).toBe(`${n}: null`);
  });

  test("climbing, empty, absolute and hidden components are refused, one component at a time", () => {
    for (const n of [
      "..",
      "../x",
      "a/../b",
      "a/..",
      ".",
      "./a",
      "/etc/passwd",
      "a//b",
      "a/",
      "",
      ".hidden",
      "d/.x",
    ])
      expect(isArtifactName(n)).toBe(false);
  });

  test("control characters, spaces, backslashes and non-ASCII are refused anywhere", () => {
    for (const n of ["a\nb", "a\tb", "a b", "a\\b", "d/\u0000x", "caf\u00e9", "a\u202eb", "-dash", "d/-x"])
      expect(isArtifactName(n)).toBe(false);
  });

  test("too long a component, too long a name or too deep a path is refused", () => {
    expect(isArtifactName("x".repeat(202))).toBe(false);
    expect(isArtifactName(Array(41).fill("d").join("/"))).toBe(false);
    expect(isArtifactName(Array(40).fill("d").join("/"))).toBe(true);
    expect(artifactNameProblem(Array(6).fill("y".repeat(200)).join("/"))).toContain("at most 1024");
  });
});

describe("release artifacts", () => {
  test("an artifact whose file is SHA256SUMS, in any case or directory, cannot become a release", () => {
    for (const n of ["SHA256SUMS", "out/SHA256SUMS", "sha256sums", "d/Sha256Sums"])
      expect(() => checkReleaseArtifact(n)).toThrow("cannot be released");
    for (const n of ["SHA256SUMS.txt", "image.raw", "SHA256SUMS/file"])
      expect(checkReleaseArtifact(n)).toBe(n);
  });

  test("a release artifact is first an artifact name: traversal is refused as INVALID_NAME", () => {
    expect(() => checkReleaseArtifact("../SHA256SUMS")).toThrow("is not an artifact name");
  });
});

describe("names", () => {
  test("one rule for every name: traversal, separators, upper case and control characters are refused", () => {
    for (const bad of ["..", "a..b", "../x", "a/b", "A", ".x", "-x", "", "a b", "a\u0000", "x".repeat(64)]) {
      expect(isName(bad)).toBe(false);
      expect(nameSchema().safeParse(bad).success).toBe(false);
    }
    for (const ok of ["a", "web-1", "deb.bookworm", "x_y", "x".repeat(63)]) {
      expect(isName(ok)).toBe(true);
      expect(nameSchema().safeParse(ok).success).toBe(true);
    }
  });

  test("a refused name is a 400 INVALID_NAME that shows the value escaped", () => {
    let err: unknown;
    try {
      checkName("template", "a\nb");
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: "INVALID_NAME", status: 400 });
    expect((err as Error).message).toContain('template "a\\nb" is not a valid name');
  });
});

import { expect, test } from "bun:test";
import { TemplateRecipeSchema, templateHash } from "./template.ts";

const deb = {
  kind: "debootstrap" as const,
  suite: "bookworm",
  mirror: "http://deb.debian.org/debian",
  variant: "minbase" as const,
  include: ["build-essential"],
  packages: [],
};

test("a template's hash depends on its recipe and its base, not on key order", () => {
  const h = templateHash(deb, null);
  expect(h).toMatch(/^[0-9a-f]{64}$/);
  const reordered = {
    packages: [],
    include: ["build-essential"],
    variant: "minbase" as const,
    mirror: deb.mirror,
    suite: "bookworm",
    kind: "debootstrap" as const,
  };
  expect(templateHash(reordered, null)).toBe(h);
  expect(templateHash({ ...deb, suite: "trixie" }, null)).not.toBe(h);
  expect(templateHash({ ...deb, include: [] }, null)).not.toBe(h);
  const script = { kind: "script" as const, base: "b", script: "true", packages: [] };
  expect(templateHash(script, "a".repeat(64))).not.toBe(templateHash(script, "b".repeat(64)));
});

test("recipes are validated: suites, mirrors, package names, unknown keys", () => {
  expect(TemplateRecipeSchema.safeParse(deb).success).toBe(true);
  for (const bad of [
    { ...deb, suite: "Bookworm" },
    { ...deb, mirror: "ftp://x" },
    { ...deb, include: ["bad pkg"] },
    { ...deb, packages: ["$(id)"] },
    { ...deb, extra: 1 },
    { kind: "script", base: "../x", script: "true", packages: [] },
    { kind: "tarball", job: 0, artifact: "r.tar", packages: [] },
    { kind: "docker" },
  ]) {
    expect(TemplateRecipeSchema.safeParse(bad).success).toBe(false);
  }
});

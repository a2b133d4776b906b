import { expect, test } from "bun:test";
import { egressAllows } from "./api-proxy.ts";

test("--egress HOST allows ports 80 and 443 of that host only; HOST:PORT allows that port", () => {
  const allow = ["deb.debian.org", "mirror.example:8080"];
  expect(egressAllows(allow, "deb.debian.org", 80)).toBe(true);
  expect(egressAllows(allow, "DEB.Debian.org.", 443)).toBe(true);
  expect(egressAllows(allow, "deb.debian.org", 22)).toBe(false);
  expect(egressAllows(allow, "security.debian.org", 443)).toBe(false);
  expect(egressAllows(allow, "evil.deb.debian.org", 443)).toBe(false);
  expect(egressAllows(allow, "mirror.example", 8080)).toBe(true);
  expect(egressAllows(allow, "mirror.example", 80)).toBe(false);
  expect(egressAllows([], "deb.debian.org", 80)).toBe(false);
});

import { expect, test } from "bun:test";
import { formatDuration, parseDuration } from "./duration.ts";
import { checkName, isName } from "./names.ts";

test("durations parse with units and combined units; a bare number needs a unit", () => {
  expect(parseDuration("500ms")).toBe(500);
  expect(parseDuration("90s")).toBe(90_000);
  expect(parseDuration("1h30m")).toBe(5_400_000);
  expect(() => parseDuration("2")).toThrow('"2" needs a unit: 2s, 2m or 2h');
  expect(parseDuration("1.5s")).toBe(1500);
  for (const bad of ["", "soon", "5 minutes", "1h30", "-1s", "1y"])
    expect(() => parseDuration(bad)).toThrow("is not a duration");
});

test("durations format for people", () => {
  expect(formatDuration(850)).toBe("850ms");
  expect(formatDuration(12_300)).toBe("12.3s");
  expect(formatDuration(245_000)).toBe("4m05s");
  expect(formatDuration(7_260_000)).toBe("2h01m");
});

test("names refuse separators, dots at the start, uppercase and traversal", () => {
  for (const ok of ["default", "a", "web-1", "deb.bookworm", "x_y"]) expect(isName(ok)).toBe(true);
  for (const bad of ["", "../etc", "a/b", ".hidden", "UPPER", "a b", "x..y", "a".repeat(64), "-lead"])
    expect(isName(bad)).toBe(false);
  expect(() => checkName("project", "../x")).toThrow('project "../x" is not a valid name');
});

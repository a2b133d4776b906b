import { expect, test } from "bun:test";
import { intArg, repeated, safe, table } from "./common.ts";

test("a repeatable flag keeps every value in order, in both spellings, and stops at --", () => {
  const argv = [
    "--var",
    "a=1",
    "--wait",
    "--var=b=2",
    "--env",
    "X=1",
    "--var",
    "c=--var",
    "--",
    "--var",
    "d=4",
  ];
  expect(repeated(argv, "var")).toEqual(["a=1", "b=2", "c=--var"]);
  expect(repeated(argv, "env")).toEqual(["X=1"]);
  expect(repeated(argv, "needs")).toEqual([]);
});

test("client-given text is made safe for a terminal: escapes and newlines are shown, not obeyed", () => {
  expect(safe("red\x1b[31m\nnext\tline\r\x7f\x9b\\")).toBe("red\\x1b[31m\\nnext\\tline\\r\\x7f\\x9b\\");
  expect(safe("plain name-1.2_3 ünïcode")).toBe("plain name-1.2_3 ünïcode");
  const t = table(["ID", "NAME"], [[1, "a\nb"]]);
  expect(t.split("\n")).toHaveLength(2);
});

test("a whole-number flag is a number, absent is undefined, and anything else is a usage error naming it", () => {
  expect(intArg("pids", "100")).toBe(100);
  expect(intArg("priority", "-5")).toBe(-5);
  expect(intArg("pids", undefined)).toBeUndefined();
  for (const bad of ["", "1.5", "1e3", "0x10", " 1", "ten"])
    expect(() => intArg("pids", bad)).toThrow(`--pids ${bad}: must be a whole number`);
});

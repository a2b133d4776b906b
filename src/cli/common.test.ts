import { expect, test } from "bun:test";
import { repeated } from "./common.ts";

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

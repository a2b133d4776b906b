import { expect, test } from "bun:test";
import { firstInWindow } from "./once.ts";

test("a key is first once per window, and the oldest keys go when the memory is full", () => {
  const first = firstInWindow(1000, 2);
  expect([first("a", 0), first("a", 500), first("b", 600), first("a", 1000)]).toEqual([
    true,
    false,
    true,
    true,
  ]);
  // "b" is now the oldest: a third key pushes it out, so it counts as new again.
  expect([first("c", 1100), first("b", 1200), first("c", 1300)]).toEqual([true, true, false]);
});

import { expect, test } from "bun:test";
import { logOnce, printable } from "./log-once.ts";

test("the first refusal of a kind is logged in full; a thousand more are one count, told once", async () => {
  const lines: string[] = [];
  const once = logOnce((m) => lines.push(m), 50);
  for (let i = 0; i < 1000; i++) once("BODY_TOO_LARGE", `refused request ${i}`);
  once("INVALID_NAME", "refused a name");
  expect(lines).toEqual([
    expect.stringContaining("refused request 0"),
    expect.stringContaining("refused a name"),
  ]);
  await Bun.sleep(120);
  expect(lines.filter((l) => l.includes("999 more like it"))).toHaveLength(1);
  expect(lines.at(-1)).toContain("refused request 999");
  once.flush();
});

test("a kind that stays quiet for a window is forgotten, and logged in full again when it comes back", async () => {
  const lines: string[] = [];
  const once = logOnce((m) => lines.push(m), 20);
  once("X", "first");
  await Bun.sleep(60);
  once("X", "again");
  expect(lines).toEqual([expect.stringContaining("first"), expect.stringContaining("again")]);
  once.flush();
});

test("flush tells what is still counted and nothing after", () => {
  const lines: string[] = [];
  const once = logOnce((m) => lines.push(m), 60_000);
  once("X", "a");
  once("X", "b");
  once.flush();
  expect(lines).toEqual([expect.stringContaining("a"), expect.stringContaining("1 more like it")]);
});

test("a client's control characters and line breaks are escaped, so one record stays one line", () => {
  expect(printable("a\nb\u0000c\u2028d\u001b[31m")).toBe("a\\u000ab\\u0000c\\u2028d\\u001b[31m");
  const lines: string[] = [];
  logOnce((m) => lines.push(m))("K", "name\nFAKE RECORD");
  expect(lines[0]).not.toContain("\n");
});

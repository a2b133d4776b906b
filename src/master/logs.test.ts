import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type LogStore, openLogStore } from "./logs.ts";

let dir: string;
let logs: LogStore;
const enc = (s: string) => new TextEncoder().encode(s);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-logs-"));
  logs = openLogStore(dir);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test("chunks land at their offset; resent bytes are skipped and gaps refused", () => {
  expect(logs.writeAt(1, 0, enc("hello "))).toBe(true);
  expect(logs.writeAt(1, 3, enc("lo world"))).toBe(true);
  expect(logs.writeAt(1, 0, enc("hel"))).toBe(true);
  expect(logs.writeAt(1, 20, enc("later"))).toBe(false);
  logs.close(1);
  expect(readFileSync(logs.path(1), "utf8")).toBe("hello world");
  expect(logs.size(1)).toBe(11);
});

test("followers waiting on a log wake when it grows", async () => {
  const waiting = logs.waitForChange(7, 5000);
  const t0 = Date.now();
  logs.writeAt(7, 0, enc("x"));
  await waiting;
  expect(Date.now() - t0).toBeLessThan(4000);
  const timedOut = logs.waitForChange(7, 10);
  await timedOut;
});

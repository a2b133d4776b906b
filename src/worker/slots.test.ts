import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../config/load.ts";
import { logger } from "../lib/log.ts";
import type { Slot } from "../runner/contract.ts";
import { createSlotBook, slotsFromConfig } from "./slots.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), "kiln-slots-"));
  dirs.push(d);
  return d;
};

const slot = (name: string, index: number, health_check = ""): Slot => ({
  name,
  index,
  resources: [],
  devices: [],
  groups: [],
  memory: null,
  cpus: null,
  pids: null,
  health_check,
});

describe("slotsFromConfig", () => {
  test("capacity gives plain slots named slot-N; [[worker.slots]] entries keep every key and gain their index", async () => {
    const plain = loadConfig({ env: { KILN_WORKER_CAPACITY: "2" } });
    expect(slotsFromConfig(plain)).toEqual([slot("slot-0", 0), slot("slot-1", 1)]);
    const file = join(tempDir(), "kiln.toml");
    await Bun.write(
      file,
      `[[worker.slots]]\nname = "cpu"\n\n[[worker.slots]]\nname = "gpu"\nresources = ["gpu"]\nmemory = "1G"\nhealth_check = "true"\n`,
    );
    const configured = loadConfig({ file, env: { KILN_WORKER_CAPACITY: "5" } });
    expect(slotsFromConfig(configured)).toEqual([
      slot("cpu", 0),
      { ...slot("gpu", 1, "true"), resources: ["gpu"], memory: 1 << 30 },
    ]);
  });
});

describe("the slot book", () => {
  const log = logger("test");

  test("a failing health check holds the slot with its output and a passing one offers it again", async () => {
    const dir = tempDir();
    const flag = join(dir, "healthy");
    const s = slot("a", 0, `test -e ${flag} || { echo "probe not answering"; exit 3; }`);
    let changes = 0;
    const book = createSlotBook(join(dir, "holds"), [s], log, () => changes++);
    expect(await book.check(s)).toBe(false);
    expect(book.held("a")).toBe("health check failed (exit 3: probe not answering)");
    expect(await book.check(s)).toBe(false);
    expect(changes).toBe(1);
    await Bun.write(flag, "");
    expect(await book.check(s)).toBe(true);
    expect(book.held("a")).toBeNull();
    expect(changes).toBe(2);
  });

  test("a hold survives reopening the book and lasts until released, whatever the health check says", async () => {
    const dir = tempDir();
    const s = slot("b", 0, "true");
    const first = createSlotBook(join(dir, "holds"), [s], log, () => {});
    first.hold("b", "marked broken by job 7: fan failed");
    first.hold("nosuch", "ignored: not a slot of this worker");
    expect(readdirSync(join(dir, "holds"))).toEqual(["b"]);
    const again = createSlotBook(join(dir, "holds"), [s], log, () => {});
    expect(await again.check(s)).toBe(false);
    expect(again.info()).toEqual([{ name: "b", resources: [], held: "marked broken by job 7: fan failed" }]);
    again.release("b");
    expect(await again.check(s)).toBe(true);
    expect(readdirSync(join(dir, "holds"))).toEqual([]);
  });
});

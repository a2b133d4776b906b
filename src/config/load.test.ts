import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "smol-toml";
import { loadConfig } from "./load.ts";
import { SCHEMA } from "./schema.ts";

const withFile = (text: string, fn: (file: string) => void) => {
  const dir = mkdtempSync(join(tmpdir(), "kiln-config-"));
  const file = join(dir, "kiln.toml");
  writeFileSync(file, text);
  try {
    fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

describe("loadConfig", () => {
  test("defaults apply when nothing is given", () => {
    const cfg = loadConfig({ env: {} });
    expect(cfg.master.listen).toBe("127.0.0.1:7070");
    expect(cfg.master.lease).toBe(30_000);
    expect(cfg.worker.channels).toEqual(["default"]);
  });

  test("file < env < flags", () => {
    withFile('[master]\nlisten = "127.0.0.1:1"\nlease = "10s"\n[worker]\ncapacity = 3\n', (file) => {
      const fileOnly = loadConfig({ file, env: {} });
      expect([fileOnly.master.listen, fileOnly.master.lease, fileOnly.worker.capacity]).toEqual([
        "127.0.0.1:1",
        10_000,
        3,
      ]);
      const env = loadConfig({
        file,
        env: { KILN_MASTER_LISTEN: "127.0.0.1:2", KILN_WORKER_CHANNELS: "a, b" },
      });
      expect(env.master.listen).toBe("127.0.0.1:2");
      expect(env.worker.channels).toEqual(["a", "b"]);
      const flags = loadConfig({
        file,
        env: { KILN_MASTER_LISTEN: "127.0.0.1:2" },
        flags: { master: { listen: "127.0.0.1:3" } },
      });
      expect(flags.master.listen).toBe("127.0.0.1:3");
    });
  });

  test("an unknown key, section, type or value is refused with the key and the file named", () => {
    withFile("[master]\nlisen = 1\n", (file) =>
      expect(() => loadConfig({ file, env: {} })).toThrow(`${file}: unknown key master.lisen`),
    );
    withFile("[mastr]\n", (file) =>
      expect(() => loadConfig({ file, env: {} })).toThrow(`${file}: unknown section [mastr]`),
    );
    withFile("[worker]\ncapacity = 0\n", (file) =>
      expect(() => loadConfig({ file, env: {} })).toThrow(`${file}: worker.capacity must be at least 1`),
    );
    withFile('[log]\nformat = "xml"\n', (file) =>
      expect(() => loadConfig({ file, env: {} })).toThrow("log.format must be one of"),
    );
    withFile("[master\n", (file) => expect(() => loadConfig({ file, env: {} })).toThrow("is not valid TOML"));
    expect(() => loadConfig({ file: "/nonexistent/kiln.toml", env: {} })).toThrow(
      "cannot read config file /nonexistent/kiln.toml",
    );
    expect(() => loadConfig({ env: { KILN_WORKER_CAPACITY: "lots" } })).toThrow(
      "environment: KILN_WORKER_CAPACITY must be an integer",
    );
    expect(() => loadConfig({ env: { KILN_LOG_COLOUR: "x" } })).toThrow("unknown variable KILN_LOG_COLOUR");
    expect(() => loadConfig({ env: {}, flags: { master: { listen: "x" } } })).toThrow(
      "command line: --listen must be HOST:PORT",
    );
  });

  test("appliance/kiln.toml documents every key with its default, and loads", () => {
    const file = join(import.meta.dir, "..", "..", "appliance", "kiln.toml");
    const doc = parse(readFileSync(file, "utf8")) as Record<string, Record<string, unknown>>;
    const cfg = loadConfig({ file, env: {} });
    const defaults = loadConfig({ env: {} });
    expect(cfg).toEqual(defaults);
    for (const [section, keys] of Object.entries(SCHEMA)) {
      for (const key of Object.keys(keys)) expect(doc[section]?.[key], `${section}.${key}`).toBeDefined();
    }
    // Every key carries a comment right above it.
    const lines = readFileSync(file, "utf8").split("\n");
    for (const [i, line] of lines.entries()) {
      if (/^[a-z_]+ = /.test(line)) expect(lines[i - 1], line).toStartWith("#");
    }
  });
});

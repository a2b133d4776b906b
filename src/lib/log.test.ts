import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { renderFields } from "./log.ts";

/*
 * The logger writes to the process's stderr, so each case runs a real Bun process that sets up logging
 * as `kiln` does and logs a few records; the test reads what it wrote.
 */
function stderrOf(format: "json" | "human", body: string): string[] {
  const script = `
    const { setupLogging, logger, withFields, errorFields } = await import(${JSON.stringify(join(import.meta.dir, "log.ts"))});
    const { AppError } = await import(${JSON.stringify(join(import.meta.dir, "errors.ts"))});
    setupLogging(${JSON.stringify(format)}, "info");
    ${body}
  `;
  const p = Bun.spawnSync([process.execPath, "-e", script], {
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", NO_COLOR: "1" },
    stdout: "pipe",
    stderr: "pipe",
  });
  expect(p.exitCode).toBe(0);
  return p.stderr.toString().trim().split("\n").filter(Boolean);
}

describe("JSON lines", () => {
  test("fields of a call are top-level keys beside time, level, component and msg", () => {
    const [line] = stderrOf(
      "json",
      `logger("worker").warn("job 7: slot-1 is busy", { jobId: 7, slot: "slot-1" });`,
    );
    const record = JSON.parse(line!);
    expect(record).toMatchObject({ level: "warn", component: "worker", msg: "job 7: slot-1 is busy" });
    expect(record.jobId).toBe(7);
    expect(record.slot).toBe("slot-1");
    expect(Number.isNaN(Date.parse(record.time))).toBe(false);
  });

  test("fields bound with withFields go on every record, and a call's own fields win", () => {
    const lines = stderrOf(
      "json",
      `const log = withFields(withFields(logger("worker"), { worker: "w1", slot: "a" }), { attempt: 2 });
       log.info("hello");
       log.withTag("x").info("again", { slot: "b", jobId: 3, skipped: undefined });`,
    );
    const [first, second] = lines.map((l) => JSON.parse(l));
    expect(first).toMatchObject({ msg: "hello", worker: "w1", slot: "a", attempt: 2 });
    expect(second).toMatchObject({ component: "worker:x", worker: "w1", slot: "b", jobId: 3, attempt: 2 });
    expect("skipped" in second).toBe(false);
  });

  test("a field cannot forge the record's own keys, and an AppError gives its code", () => {
    const [line, byFields] = stderrOf(
      "json",
      `const err = new AppError("SLOT_BUSY", "slot busy");
       logger("worker").error("failed", { level: "info", msg: "forged", component: "other" }, err);
       logger("worker").error("by fields", errorFields(err));`,
    );
    const record = JSON.parse(line!);
    expect(record).toMatchObject({ level: "error", component: "worker", msg: "failed", error: "slot busy" });
    expect(record.code).toBe("SLOT_BUSY");
    expect(JSON.parse(byFields!)).toMatchObject({ msg: "by fields", code: "SLOT_BUSY" });
  });

  test("a hostile message or field value stays one parseable line", () => {
    const lines = stderrOf(
      "json",
      `logger("worker").info("line one\\nline two \\"quoted\\"", { worker: "a\\nb", code: "}{" });`,
    );
    expect(lines).toHaveLength(1);
    const record = JSON.parse(lines[0]!);
    expect(record.msg).toBe('line one\nline two "quoted"');
    expect(record.worker).toBe("a\nb");
    expect(record.code).toBe("}{");
  });
});

describe("text lines", () => {
  test("fields follow the message as key=value, bound ones first", () => {
    const [line] = stderrOf(
      "human",
      `withFields(logger("worker"), { worker: "w1" }).warn("job 7: handing it back", { jobId: 7, slot: "slot-1" });`,
    );
    expect(line).toContain("job 7: handing it back worker=w1 jobId=7 slot=slot-1");
  });

  test("values with spaces, quotes or = are quoted so the pairs can be split again", () => {
    expect(renderFields({ a: "plain", b: "two words", c: 'say "hi"', d: "k=v", e: "", f: 3, g: null })).toBe(
      'a=plain b="two words" c="say \\"hi\\"" d="k=v" e="" f=3 g=null',
    );
    expect(renderFields({ gone: undefined, kept: false })).toBe("kept=false");
  });
});

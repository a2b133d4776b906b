import { describe, expect, test } from "bun:test";
import { z } from "zod";
import { readJson } from "./body.ts";
import { AppError } from "./errors.ts";
import { nameSchema } from "./names.ts";

const schema = z.strictObject({
  name: nameSchema(),
  command: z.array(z.string()).min(1),
  env: z.record(z.string(), z.string()).optional(),
});

const req = (body: string | Uint8Array | ReadableStream<Uint8Array>, headers: Record<string, string> = {}) =>
  new Request("http://x/", { method: "POST", body, headers });

async function refusal(r: Request, max?: number): Promise<[number, string, string]> {
  try {
    await readJson(r, schema, { max });
  } catch (err) {
    if (err instanceof AppError) return [err.status, err.code, err.message];
    throw err;
  }
  throw new Error("the body was accepted");
}

describe("JSON request bodies", () => {
  test("a body that is not UTF-8 is a 400 that says so, not a body read with replacement characters", async () => {
    const bytes = new Uint8Array([0x7b, 0x22, 0x6e, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]);
    expect(await refusal(req(bytes))).toEqual([
      400,
      "BAD_REQUEST",
      expect.stringContaining("not valid UTF-8"),
    ]);
  });

  test("an empty body and one that is not JSON are 400s that say which", async () => {
    expect((await refusal(req("")))[2]).toContain("empty");
    expect((await refusal(req("{nope")))[2]).toBe("the request body must be JSON");
  });

  test("a body past the limit is a 413, declared or streamed", async () => {
    expect((await refusal(req("x".repeat(100)), 10)).slice(0, 2)).toEqual([413, "BODY_TOO_LARGE"]);
    let n = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (n++ < 100) c.enqueue(new Uint8Array(1000));
        else c.close();
      },
    });
    expect((await refusal(req(stream), 5000)).slice(0, 2)).toEqual([413, "BODY_TOO_LARGE"]);
    // It stopped reading soon after the limit, not at the end of the stream.
    expect(n).toBeLessThan(20);
  });

  test("problems name the field as the API user writes it", async () => {
    const cases: [unknown, string][] = [
      [[1, 2], "the body must be a JSON object, not an array"],
      [null, "the body must be a JSON object, not null"],
      [{ name: "a" }, "command is required"],
      [{ name: "a", command: "ls" }, "command must be an array, not string"],
      [{ name: "a", command: ["ls", 5] }, "command[1] must be a string, not number"],
      [{ name: "a", command: ["ls"], env: { HOME: 1 } }, "env.HOME must be a string, not number"],
      [{ name: "a", command: ["ls"], extra: 1 }, 'unknown field "extra"'],
    ];
    for (const [body, message] of cases) {
      const [status, code, got] = await refusal(req(JSON.stringify(body)));
      expect([status, code, got]).toEqual([400, "INVALID_REQUEST", message]);
    }
  });

  test("a bad name inside a body is INVALID_NAME and shows the value escaped", async () => {
    const [status, code, message] = await refusal(req(JSON.stringify({ name: "../etc\n", command: ["ls"] })));
    expect([status, code]).toEqual([400, "INVALID_NAME"]);
    expect(message).toStartWith('name "../etc\\n" is not a valid name: must be 1-63 lowercase');
  });
});

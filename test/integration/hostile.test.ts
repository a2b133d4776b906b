import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { checkLeftoversAfterEachTest, type Master, startMaster, stopAll, tempDir } from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Requests an attacker or a broken client would send to the master's one port: huge and endless bodies,
 * oversized job specs, methods HTTP servers rarely see, truncated and malformed requests. Each gets a 4xx
 * that shows nothing of the server's insides, memory stays bounded, and the master keeps serving.
 */

const dir = tempDir();
let m: Master;
let idleRss = 0;

const status = (pid: number, key: string) =>
  Number(new RegExp(`${key}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;

beforeAll(async () => {
  m = await startMaster(dir.path);
  idleRss = status(m.proc.pid, "VmRSS");
});

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

/** True once `text` holds a whole HTTP response: its head and as much body as it declares. */
function wholeResponse(text: string): boolean {
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return false;
  const head = text.slice(0, end);
  const body = text.slice(end + 4);
  if (/^transfer-encoding:\s*chunked/im.test(head)) return body.endsWith("0\r\n\r\n");
  return body.length >= Number(/^content-length:\s*(\d+)/im.exec(head)?.[1] ?? 0);
}

/**
 * Sends raw bytes on a fresh connection and returns what came back once a whole response is in or the
 * server closed. The 2 s timer only bounds a server that does neither (a request it still waits on).
 */
async function raw(bytes: string, closeAfterWrite = false): Promise<string> {
  const port = Number(new URL(m.url).port);
  const got: Buffer[] = [];
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2000);
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.write(bytes);
          if (closeAfterWrite) s.end();
        },
        data(s, d) {
          got.push(Buffer.from(d));
          if (wholeResponse(Buffer.concat(got).toString("latin1"))) {
            clearTimeout(timer);
            s.end();
            resolve();
          }
        },
        close() {
          clearTimeout(timer);
          resolve();
        },
        error() {
          clearTimeout(timer);
          resolve();
        },
      },
    });
  });
  return Buffer.concat(got).toString("latin1");
}

const post = (body: string | ReadableStream<Uint8Array>, headers: Record<string, string> = {}) =>
  fetch(`${m.url}/api/v1/jobs`, {
    method: "POST",
    headers: { authorization: `Bearer ${m.token}`, "content-type": "application/json", ...headers },
    body,
  });

/** No response may show source, stack frames or the master's working directory. */
function expectNoInternals(text: string) {
  expect(text).not.toContain(dir.path);
  expect(text).not.toMatch(/\bat .*\.(ts|js):\d+|node_modules|\/src\//);
}

describe("hostile requests to the master", () => {
  test("a 50 MB nested JSON body is refused with 413 before it is read, declared or streamed", async () => {
    const nested = `${"[".repeat(25 << 20)}${"]".repeat(25 << 20)}`;
    const declared = await post(nested);
    expect(declared.status).toBe(413);
    expect(((await declared.json()) as { error: { code: string } }).error.code).toBe("BODY_TOO_LARGE");
    // Chunked, with no length to refuse it by: read only up to the limit.
    const chunk = new TextEncoder().encode("[".repeat(1 << 20));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent++ < 50) c.enqueue(chunk);
        else c.close();
      },
    });
    const streamed = await post(stream).catch((err) => err as Error);
    if (streamed instanceof Response) expect(streamed.status).toBe(413);
    else expect(sent).toBeLessThan(50);
  });

  test("job specs over the documented limits are refused at submit, naming the limit", async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ command: ["sh", "-c", "x".repeat(200 * 1024)] }, /command.*at most 131071 bytes/],
      [{ command: Array.from({ length: 5000 }, () => "a") }, /at most 4096 arguments/],
      [{ command: ["true"], env: { BIG: "x".repeat(200 * 1024) } }, /env.*at most 131071 bytes/],
      [
        {
          command: ["true"],
          env: Object.fromEntries(Array.from({ length: 1100 }, (_, i) => [`V${i}`, "1"])),
        },
        /at most 1024 environment variables/,
      ],
    ];
    for (const [spec, message] of cases) {
      const res = await post(JSON.stringify(spec));
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(message);
    }
    // Fifty 1 MiB arguments: over the body limit before anything is parsed.
    const res = await post(
      JSON.stringify({ command: Array.from({ length: 50 }, () => "y".repeat(1 << 20)) }),
    );
    expect(res.status).toBe(413);
  });

  test("CONNECT and unknown methods get a 4xx that shows no internals, without login", async () => {
    const connect = await raw(`CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n`);
    expect(connect).toMatch(/^HTTP\/1\.1 405 /);
    expectNoInternals(connect);
    const trace = await raw("TRACE / HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(trace).toMatch(/^HTTP\/1\.1 405 /);
    expectNoInternals(trace);
    const brew = await raw("BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(brew === "" || /^HTTP\/1\.1 4\d\d /.test(brew)).toBe(true);
  });

  test("malformed and truncated requests get a 400 or a closed connection, never a 5xx", async () => {
    expect(await raw("GARBAGE\r\n\r\n")).toMatch(/^HTTP\/1\.1 400 /);
    const badChunk = await raw(
      `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${m.token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`,
    );
    expect(badChunk).not.toMatch(/ 5\d\d /);
    expectNoInternals(badChunk);
    const truncated = await raw(
      `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${m.token}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"command":`,
      true,
    );
    expect(truncated).not.toMatch(/ 5\d\d /);
    const notJson = await post("{ this is not json");
    expect(notJson.status).toBe(400);
  });

  test("after all that, memory stayed bounded and the master still serves", async () => {
    // Peak RSS over the whole run: under twice the idle figure plus the body limit.
    expect(status(m.proc.pid, "VmHWM")).toBeLessThan(2 * idleRss + (1 << 20));
    expect((await fetch(`${m.url}/readyz`)).ok).toBe(true);
    const ok = await post(JSON.stringify({ command: ["true"] }));
    expect(ok.status).toBe(201);
    expect(m.log()).not.toMatch(/"level":"fatal"/);
  });
});

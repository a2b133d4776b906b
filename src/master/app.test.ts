import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openStore, type Store } from "../store/open.ts";
import { createToken } from "../store/tokens.ts";
import { createApp, patternRegex, routeTable } from "./app.ts";
import type { MasterContext } from "./context.ts";
import { testContext } from "./test-context.ts";

/*
 * The app's own answers, in process against a real store: its route table, 405 for a method a known path
 * does not take, and refusals told once in the log however often a client repeats them.
 */

let dir: string;
let store: Store;
let app: ReturnType<typeof createApp>;
let admin = "";
const lines: string[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-app-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  const ctx = testContext(dir, store);
  const log = {
    info: (m: string) => lines.push(`info ${m}`),
    error: (m: string) => lines.push(`error ${m}`),
  };
  app = createApp({ ...ctx, log: log as unknown as MasterContext["log"] });
  admin = (await createToken(store, { role: "admin", name: "a" })).secret;
  lines.length = 0;
});
afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const call = (method: string, path: string, body?: string) =>
  app.request(path, { method, headers: { authorization: `Bearer ${admin}` }, body });

describe("the route table", () => {
  test("lists every route once, by method and path, the websocket and TLS routes included", () => {
    const table = routeTable();
    const keys = table.map((r) => `${r.method} ${r.path}`);
    expect(new Set(keys).size).toBe(keys.length);
    expect(keys).toContain("POST /api/v1/jobs");
    expect(keys).toContain("PUT /api/v1/worker/artifacts/:id/:attempt/:name{.+}");
    expect(keys).toContain("GET /api/v1/worker/connect");
    expect(keys).toContain("POST /api/v1/tls/enroll");
    expect(table.every((r) => ["GET", "POST", "PUT", "DELETE"].includes(r.method))).toBe(true);
  });

  test("a pattern matches its paths and no others", () => {
    const re = patternRegex("/api/v1/jobs/:id/artifacts/:name{.+}");
    expect(re.test("/api/v1/jobs/7/artifacts/d/f.txt")).toBe(true);
    expect(re.test("/api/v1/jobs/7/artifacts/")).toBe(false);
    expect(patternRegex("/api/v1/jobs/:id").test("/api/v1/jobs/7/log")).toBe(false);
  });
});

describe("methods", () => {
  test("a method a known path does not take gets 405 with Allow and the error JSON", async () => {
    for (const [method, path, allow] of [
      ["DELETE", "/api/v1/jobs", "GET, HEAD, POST, OPTIONS"],
      ["PUT", "/api/v1/jobs/1", "GET, HEAD, OPTIONS"],
      ["PATCH", "/healthz", "GET, HEAD, OPTIONS"],
      ["GET", "/api/v1/jobs/1/cancel", "POST, OPTIONS"],
    ] as const) {
      const res = await call(method, path);
      expect([method, path, res.status, res.headers.get("allow")]).toEqual([method, path, 405, allow]);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe("METHOD_NOT_ALLOWED");
    }
  });

  test("OPTIONS on a known path says what it takes; an unknown path is a 404 whatever the method", async () => {
    const res = await call("OPTIONS", "/api/v1/recipes/x");
    expect([res.status, res.headers.get("allow")]).toEqual([204, "GET, HEAD, DELETE, OPTIONS"]);
    expect((await call("PATCH", "/api/v1/nothing")).status).toBe(404);
  });
});

test("a refusal repeated a thousand times is logged once, with what was wrong", async () => {
  for (let i = 0; i < 1000; i++) expect((await call("POST", "/api/v1/jobs", "{nope")).status).toBe(400);
  for (let i = 0; i < 100; i++) expect((await call("DELETE", "/api/v1/jobs")).status).toBe(405);
  expect(lines).toEqual([
    expect.stringMatching(
      /^info refused POST \/api\/v1\/jobs for token a \([0-9a-f]{12}, admin\): 400 BAD_REQUEST: the request body must be JSON/,
    ),
    expect.stringMatching(/^info refused DELETE \/api\/v1\/jobs: 405, it takes GET, HEAD, POST/),
  ]);
});

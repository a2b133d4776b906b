import { expect, test } from "bun:test";
import { routeTable } from "../src/master/app.ts";
import { httpCases, rawCases, rng, wsCases } from "./fuzz-input.ts";

const target = { routes: routeTable(), token: "t", jobId: 1 };
const run = (seed: number) => {
  const r = rng(seed);
  return [httpCases(r, target, 300), rawCases(r, target, 30), wsCases(r, 30)];
};
/** A digest of every case's bytes: cases hold megabytes, which JSON.stringify would spell out. */
const digest = (cases: ReturnType<typeof run>) => {
  const h = new Bun.CryptoHasher("sha256");
  for (const c of cases.flat()) {
    h.update(c.what);
    if ("path" in c) h.update(`${c.method} ${c.path} ${JSON.stringify(c.headers)}`);
    if ("body" in c && c.body !== undefined) h.update(c.body);
    if ("bytes" in c) h.update(c.bytes);
    if ("frames" in c) for (const f of c.frames) h.update(f);
  }
  return h.digest("hex");
};

test("the same seed gives the same cases, and another seed other cases", () => {
  expect(digest(run(42))).toBe(digest(run(42)));
  expect(digest(run(42))).not.toBe(digest(run(43)));
}, 60_000);

test("the cases reach every route of the table and every kind of attack", () => {
  const [http] = run(7) as [ReturnType<typeof httpCases>];
  const hit = new Set(
    http
      .map((c) => c.path.split("?")[0]!)
      .flatMap((p) =>
        target.routes.filter((r) => new RegExp(`^${r.path.replace(/:[a-z]+(\{[^}]*\})?/gi, ".+")}$`).test(p)),
      ),
  );
  expect(target.routes.filter((r) => !hit.has(r)).map((r) => `${r.method} ${r.path}`)).toEqual([]);
  for (const kind of ["hostile name", "-only", "invalid UTF-8", "a body of", "odd headers", "field"])
    expect(http.some((c) => c.what.includes(kind))).toBe(true);
}, 60_000);

import { afterEach, beforeEach, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConsola } from "consola";
import { loadConfig } from "../config/load.ts";
import { AppError } from "../lib/errors.ts";
import { setupLogging } from "../lib/log.ts";
import { type RunningMaster, startMaster } from "../master/index.ts";
import { createWorkerJoinToken } from "../master/tls.ts";
import { certificateAuth } from "./certificate.ts";

/*
 * When a worker reuses the certificate it keeps and when it joins again, against a real TLS master in
 * process (Bun.serve on 127.0.0.1, a libSQL file) and the real enrollment.
 */

setupLogging("json", "error");
setDefaultTimeout(30_000);

let dir: string;
let master: RunningMaster;
const said: string[] = [];
const log = createConsola({ level: 3, reporters: [{ log: (o) => said.push(o.args.join(" ")) }] });

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-t-cert-"));
  const cfg = loadConfig({
    env: { KILN_MASTER_LISTEN: "127.0.0.1:0", KILN_MASTER_TLS: "true", KILN_MASTER_TLS_NAMES: "127.0.0.1" },
  });
  master = await startMaster(cfg, join(dir, "m"));
  said.length = 0;
});
afterEach(async () => {
  await master.stop();
  rmSync(dir, { recursive: true, force: true });
});

const token = async () => (await createWorkerJoinToken(master.ctx, { createdBy: "test" })).token;
const auth = (name: string, join_?: string) =>
  certificateAuth({ masterUrl: master.url, dir: join(dir, "w"), name, join: join_, log });
const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => "resolved",
    (e) => (e instanceof AppError ? e.code : `thrown: ${(e as Error).message}`),
  );

test("a worker joins once and then reuses its certificate, with or without the same token, even with the master away", async () => {
  const t = await token();
  await auth("t-keep", t);
  expect(said.filter((s) => s.startsWith("joined")).length).toBe(1);
  await master.stop();
  // No master to ask: the kept identity serves as it is.
  const again = await auth("t-keep", t);
  expect(again.tls()?.cert).toContain("BEGIN CERTIFICATE");
  expect((await auth("t-keep")).tls()?.cert).toBe(again.tls()!.cert);
  expect(said.filter((s) => s.startsWith("joined")).length).toBe(1);
  master = await startMaster(master.ctx.cfg, join(dir, "m"));
});

test("a kept certificate for another name, or from another master, is not used", async () => {
  await auth("t-old", await token());
  const renamed = await codeOf(auth("t-new"));
  expect(renamed).toBe("TLS_NOT_ENROLLED");
  await auth("t-new").catch((e: Error) => expect(e.message).toContain("is for worker t-old, not t-new"));
  const foreign = `kiln1.${"ab".repeat(32)}.${"x".repeat(43)}`;
  expect(await codeOf(auth("t-old", foreign))).toBe("TLS_FINGERPRINT_MISMATCH");
  expect(said.join("\n")).toContain("its certificate is from another master");
});

test("a new join token means joining again, which the master refuses while the old certificate lives", async () => {
  await auth("t-twice", await token());
  expect(await codeOf(auth("t-twice", await token()))).toBe("WORKER_ALREADY_ENROLLED");
  expect(said.join("\n")).toContain("the join token given is a new one");
});

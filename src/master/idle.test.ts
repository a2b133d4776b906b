import { afterEach, beforeEach, expect, test } from "bun:test";
import { waitFor } from "../../test/harness.ts";
import { setupLogging } from "../lib/log.ts";
import { assignJob, finishJob, insertJob, markRunning } from "../store/jobs.ts";
import { testJob } from "../store/test-job.ts";
import type { RunningMaster } from "./index.ts";
import { newJobCredential } from "./job-credential.ts";
import { startTestMaster, type TestMaster } from "./test-master.ts";

/*
 * The idle timeout against a real master (Bun.serve on 127.0.0.1, a real store) with a 5 s timeout: a
 * silent connection is closed, and the slow but live ones (an upload whose bytes keep coming, a follower
 * of a quiet job's log) outlive it. "Long enough" is shown without a clock: each slow request goes on
 * until a stalled socket opened beside it has been closed by the same timeout.
 */

setupLogging("json", "error");

let fixture: TestMaster;
let master: RunningMaster;
let token = "";
let jobId = 0;
/** The running job's own credential, which its uploads carry. */
let credential = "";
let port = 0;

beforeEach(async () => {
  fixture = await startTestMaster("kiln-idle-", { KILN_MASTER_IDLE_TIMEOUT: "5s" });
  ({ master, admin: token } = fixture);
  port = Number(new URL(master.url).port);
  const store = master.ctx.store;
  const row = await insertJob(
    store,
    testJob({
      name: "quiet",
    }),
  );
  jobId = row.id;
  const made = newJobCredential(jobId);
  credential = made.secret;
  await assignJob(store, jobId, "w", "slot-0", 60_000, Date.now(), made.hash);
  await markRunning(store, jobId, 1, "w", 60_000);
});
afterEach(() => fixture.stop());

/** A raw connection: `closed` resolves when the master closes it; `text()` is what it answered. */
function connect(first: string) {
  let got = "";
  let sock: { write(b: string): number; end(): void } | undefined;
  const closed = new Promise<void>((resolve) => {
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          sock = s;
          s.write(first);
        },
        data(_s, d) {
          got += Buffer.from(d).toString("latin1");
        },
        close: () => resolve(),
        error: () => resolve(),
      },
    });
  });
  return { closed, text: () => got, write: (b: string) => sock?.write(b), end: () => sock?.end() };
}

const stall = () =>
  connect(
    `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: 100\r\n\r\n{`,
  );

test("a connection that stops mid-body, or sits idle after a response, is closed by the idle timeout", async () => {
  const stalled = stall();
  const idle = connect("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  await Promise.all([stalled.closed, idle.closed]);
  expect(idle.text()).toStartWith("HTTP/1.1 200");
  expect(stalled.text()).toBe("");
}, 60_000);

test("an upload whose bytes keep coming outlives the idle timeout", async () => {
  const body = "x".repeat(4000);
  const sha = new Bun.CryptoHasher("sha256").update(body).digest("hex");
  const upload = connect(
    `PUT /api/v1/worker/artifacts/${jobId}/1/slow.bin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${credential}\r\nx-kiln-sha256: ${sha}\r\nx-kiln-size: ${body.length}\r\nContent-Length: ${body.length}\r\n\r\n`,
  );
  const stalled = stall();
  let sent = 0;
  // A byte every 100 ms: far slower than any link, never silent for the timeout.
  const trickle = setInterval(() => {
    if (sent < body.length - 100) upload.write(body.slice(sent, ++sent));
  }, 100);
  await stalled.closed;
  clearInterval(trickle);
  upload.write(body.slice(sent));
  await waitFor("the upload's answer", () => upload.text().includes("\r\n\r\n"), 10_000);
  expect(upload.text()).toStartWith("HTTP/1.1 201");
  upload.end();
}, 60_000);

test("a follower of a quiet job's log outlives the idle timeout and gets what comes later", async () => {
  // The answer's head goes out with the first bytes of log: until then the follower waits on it.
  const answer = fetch(`${master.url}/api/v1/jobs/${jobId}/log?follow=1`, {
    headers: { authorization: `Bearer ${token}` },
  });
  const stalled = stall();
  await stalled.closed;
  master.ctx.logs.append(jobId, "after the quiet\n");
  const outcome = {
    state: "succeeded",
    reason: null,
    exitCode: 0,
    message: null,
    peakMemoryBytes: null,
    cpuMs: null,
  } as const;
  await finishJob(master.ctx.store, jobId, 1, outcome, master.ctx.logs.size(jobId));
  master.ctx.logs.notify(jobId);
  const res = await answer;
  expect(res.status).toBe(200);
  expect(await res.text()).toBe("after the quiet\n");
}, 60_000);

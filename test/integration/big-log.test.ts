import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { statSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Jobs whose output comes faster than the socket to the master can take: every byte must arrive, in
 * order, and the job must end, however long the log. And one job's runaway log must not fill the
 * master's disk: past master.log_max it is cut, said in the log, and the job still ends.
 */

const dir = tempDir();
let m: Master;
const MAX = 256 * 2 ** 20;

beforeAll(async () => {
  m = await startMaster(dir.path, { env: { KILN_MASTER_LOG_MAX: String(MAX) } });
  await startWorker(m, dir.path, "e-biglog", { capacity: 2 });
});

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

describe("big logs", () => {
  test("a job that writes 200 MB as fast as it can ends succeeded with every byte in its log", async () => {
    const id = await submitJob(m, { command: ["sh", "-c", "yes kiln-log-line | head -c 200000000"] });
    const job = await waitJob(m, id, 120_000);
    expect(job.state).toBe("succeeded");
    const path = join(m.data, "logs", `${id}.log`);
    expect(statSync(path).size).toBe(200_000_000);
    // The bytes are the job's, in order: the same as the command gives locally.
    const want = Bun.spawnSync([
      "sh",
      "-c",
      "yes kiln-log-line | head -c 200000000 | sha256sum",
    ]).stdout.toString();
    const got = Bun.spawnSync(["sha256sum", path]).stdout.toString();
    expect(got.split(" ")[0]).toBe(want.split(" ")[0]);
  }, 180_000);

  test("a log past master.log_max is cut with a line saying so, and the job still ends", async () => {
    const id = await submitJob(m, {
      command: ["sh", "-c", "head -c 300000000 /dev/zero | tr '\\0' x; echo done"],
    });
    const job = await waitJob(m, id, 180_000);
    expect(job.state).toBe("succeeded");
    const path = join(m.data, "logs", `${id}.log`);
    const size = statSync(path).size;
    expect(size).toBeGreaterThan(MAX);
    expect(size).toBeLessThan(MAX + 1024);
    const tail = (await m.cli(["logs", String(id)])).stdout.slice(-200);
    expect(tail).toContain(`--- kiln: log cut at ${MAX} bytes (master.log_max)`);
  }, 240_000);
});

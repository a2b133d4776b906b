import { afterAll, expect, test } from "bun:test";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * The master's disk fills while a job runs. Nothing may loop or be lost: the finished job waits in the
 * worker's outbox, no lease runs out on time the master could not write, the API says the master's disk
 * is full (507 STORAGE_FULL, not a 500), the operator reads it once in the master's log, and when space
 * returns the job ends succeeded, having run exactly once.
 */

const root = process.getuid?.() === 0;
const dir = tempDir("kiln-diskfull-", "/var/tmp");
const mnt = join(dir.path, "small");
let m: Master;

afterAll(async () => {
  await stopAll();
  if (existsSync(mnt)) Bun.spawnSync(["umount", "-l", mnt]);
  dir[Symbol.dispose]();
});

test.skipIf(!root)(
  "a full master disk: clear errors, no lease expiry, no second run, and recovery when space returns",
  async () => {
    mkdirSync(mnt);
    expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", mnt]).exitCode).toBe(
      0,
    );
    m = await startMaster(mnt, {
      env: { KILN_MASTER_LEASE: "2s", KILN_MASTER_HEARTBEAT: "500ms" },
    });
    await startWorker(m, dir.path, "e-diskfull", { capacity: 2, env: { KILN_WORKER_RUNNER: "process" } });
    const runs = join(dir.path, "runs");
    const gate = join(dir.path, "gate");
    const id = await submitJob(m, {
      command: ["sh", "-c", `echo ran >> ${runs}; while [ ! -e ${gate} ]; do sleep 0.05; done; echo done`],
    });
    await waitFor("the job to run", () => existsSync(runs));

    // Fill the master's disk to the last block, then let the job finish.
    const fill = join(mnt, "fill");
    Bun.spawnSync(["dd", "if=/dev/zero", `of=${fill}`, "bs=1M"], { stderr: "ignore" });
    Bun.spawnSync([
      "sh",
      "-c",
      `i=0; while dd if=/dev/zero of=${fill}.$i bs=4k count=1 2>/dev/null; do i=$((i+1)); done`,
    ]);
    Bun.spawnSync(["touch", gate]);

    // Writes fail now: a submit says whose disk is full and what to do, with a storage code.
    const refused = await waitFor("a submit to be refused", async () => {
      const r = await m.api<{ error: { code: string; message: string } }>("POST", "/api/v1/jobs", {
        command: ["true"],
      });
      return r.status === 507 ? r.body : null;
    });
    expect(refused.error.code).toBe("STORAGE_FULL");
    expect(refused.error.message).toContain("the master's disk is full");
    // Ten leases long the master cannot write: the job must neither be re-queued nor run again. Not a
    // wait for something: time passing with the disk full is the fault under test, and nothing happening
    // during it is the result.
    await Bun.sleep(20_000);
    const during = await m.api<{ state: string; attempt: number }>("GET", `/api/v1/jobs/${id}`);
    expect(during.body.attempt).toBe(1);
    expect(["assigned", "running"]).toContain(during.body.state);
    expect(readFileSync(runs, "utf8")).toBe("ran\n");

    // Space returns: the result in the worker's outbox is recorded, once.
    Bun.spawnSync(["sh", "-c", `rm -f ${fill}*`]);
    const job = await waitJob(m, id, 60_000);
    expect(job).toMatchObject({ state: "succeeded", attempt: 1 });
    expect(readFileSync(runs, "utf8")).toBe("ran\n");
    const log = (await m.cli(["logs", String(id)])).stdout;
    expect(log).toBe("done\n");
    const masterLog = m.log();
    expect(masterLog.match(/the master's disk is full/g)?.length).toBe(1);
    expect(masterLog).toContain("the master can write again");
    expect(masterLog).not.toMatch(/worker e-diskfull: .*ENOSPC/);
    // And it serves writes again.
    expect((await m.api("POST", "/api/v1/jobs", { command: ["true"] })).status).toBe(201);
    await m.kill("SIGTERM");
  },
  180_000,
);

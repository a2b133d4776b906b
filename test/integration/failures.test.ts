import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  type Master,
  startMaster,
  stopAll,
  subDir,
  submitJob,
  tempDir,
  waitFor,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Whose failure is it? A job's own mistake (a command that does not exist, a PATH that finds nothing)
 * ends failed with 127 and the reason in its log, like a shell. A slot that cannot be set up is held
 * with the reason and the job goes back to the queue, instead of failing every job it is given.
 */

const root = process.getuid?.() === 0;
const dir = tempDir("kiln-failures-", "/var/tmp");

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

const sub = (name: string) => subDir(dir.path, name);

/** The JSON records of a role's log (its stderr is not a terminal, so `kiln` writes JSON lines). */
const records = (m: Master) =>
  m
    .log()
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>);

for (const runner of root ? ["sandbox", "process"] : ["process"]) {
  describe(`a job's own mistakes (${runner} runner)`, () => {
    let m: Master;
    test("a command that does not exist ends failed, exit 127, with the reason in its log", async () => {
      m = await startMaster(sub(runner), {
        role: "up",
        name: `up-${runner}`,
        env: { KILN_WORKER_RUNNER: runner, KILN_WORKER_NAME: `e-fail-${runner}` },
      });
      const r = await m.cli(["submit", "--wait", "--", "/nonexistent/cmd", "arg"]);
      expect(r.code).toBe(127);
      expect(r.stdout).toContain("kiln: cannot run the job's command: /nonexistent/cmd");
      const jobs = (await m.api<JobJson[]>("GET", "/api/v1/jobs?limit=1")).body;
      expect(jobs[0]).toMatchObject({ state: "failed", reason: "exit", exitCode: 127 });
      // The worker's record of the outcome names the job, the attempt, the worker and the slot as keys.
      const ended = records(m).find(
        (r) => r.component === "worker" && r.msg === `job ${jobs[0]!.id}: failed (exit)`,
      );
      expect(ended).toMatchObject({
        jobId: jobs[0]!.id,
        attempt: 1,
        worker: `e-fail-${runner}`,
      });
      expect(String(ended?.slot)).toMatch(/^slot-\d+$/);
    });

    test("a PATH that finds nothing ends the same way", async () => {
      const r = await m.cli(["submit", "--wait", "--env", "PATH=/nonexistent", "--", "ls"]);
      expect(r.code).toBe(127);
      expect(r.stdout).toContain("kiln: cannot run the job's command: ls");
      await m.kill("SIGTERM");
    });
  });
}

describe("a slot that cannot be set up", () => {
  test.skipIf(!root)(
    "is held with the reason, and its job waits in the queue without spending a retry",
    async () => {
      // Slots whose device node is gone (a disk pulled, a driver unloaded): the launcher cannot build the
      // job's /dev, whatever the job is.
      const d = sub("gone-device");
      const config = join(d, "kiln.toml");
      writeFileSync(
        config,
        [0, 1].map((i) => `[[worker.slots]]\nname = "s${i}"\ndevices = ["/dev/kiln-test-gone"]\n`).join("\n"),
      );
      const m = await startMaster(d, {
        role: "up",
        name: "up-gone",
        args: ["--config", config],
        env: { KILN_WORKER_NAME: "e-gone" },
      });
      const id = await submitJob(m, { command: ["true"], retries: 0 });
      const slots = await waitFor("both slots to be held", async () => {
        const w = (
          await m.api<{ slots: { name: string; held: string | null }[] }[]>("GET", "/api/v1/workers")
        ).body[0];
        return w?.slots.every((s) => s.held) ? w.slots : null;
      });
      for (const s of slots) expect(s.held).toContain(`set-up failed for job ${id}`);
      const job = (await m.api<JobJson & { message: string }>("GET", `/api/v1/jobs/${id}`)).body;
      expect(job.state).toBe("queued");
      expect(job.attempt).toBe(3);
      expect(job.message).toContain("set-up failed");
      expect(m.log()).toContain("the slot is held and the job re-queued");
      const setUp = records(m).filter((r) => r.code === "SLOT_SETUP_FAILED");
      expect(setUp.length).toBeGreaterThan(0);
      for (const r of setUp) {
        expect(r).toMatchObject({ level: "error", component: "worker", jobId: id, worker: "e-gone" });
        expect(["s0", "s1"]).toContain(r.slot as string);
      }
      await m.kill("SIGTERM");
    },
  );
});

import { afterAll, expect, test } from "bun:test";
import {
  checkLeftoversAfterEachTest,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * `kiln rebuild --compare` through the compiled binary, with two workers: the rebuild runs on the worker
 * the job did not run on, and the verdict (and `kiln show`) says which artifacts match.
 */

const dir = tempDir("kiln-rebuild-");
const PROCESS = { KILN_WORKER_RUNNER: "process" };

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

test("a rebuild runs on the other worker and reports per artifact whether the sha256 matches", async () => {
  const m = await startMaster(dir.path);
  await startWorker(m, dir.path, "rb-one", { env: PROCESS });
  await startWorker(m, dir.path, "rb-two", { env: PROCESS });

  // The same bytes every time, and one file that is not.
  const script =
    'printf "hello\\n" > "$KILN_OUT/hello.txt"; mkdir "$KILN_OUT/d"; echo fixed > "$KILN_OUT/d/x"';
  const steady = await submitJob(m, { command: ["sh", "-c", script] });
  const first = await waitJob(m, steady);
  expect(first.state).toBe("succeeded");
  const same = await m.cli(["rebuild", String(steady), "--compare"]);
  expect([same.code, same.stderr]).toEqual([0, expect.stringContaining(`job ${steady} rebuilding as`)]);
  expect(same.stdout).toContain("reproducible: 2 artifact(s) with the same sha256");
  const other = first.worker === "rb-one" ? "rb-two" : "rb-one";
  expect(same.stdout).toContain(`on ${first.worker}, rebuild`);
  expect(same.stdout).toContain(`on ${other}`);
  expect((await m.cli(["show", String(steady)])).stdout).toMatch(
    /^rebuilt: +reproducible \(job \d+ and rebuild \d+ made the same files\)$/m,
  );

  const stamped = await submitJob(m, {
    command: ["sh", "-c", `${script}; date +%s%N > "$KILN_OUT/stamp"`],
  });
  expect((await waitJob(m, stamped)).state).toBe("succeeded");
  const differs = await m.cli(["rebuild", String(stamped), "--compare", "--json"]);
  expect(differs.code).toBe(1);
  const r = JSON.parse(differs.stdout);
  expect(r.state).toBe("differs");
  expect(r.artifacts.map((a: { name: string; same: boolean }) => [a.name, a.same])).toEqual([
    ["d/x", true],
    ["hello.txt", true],
    ["stamp", false],
  ]);
  const show = (await m.cli(["show", String(r.rebuild)])).stdout;
  expect(show).toContain(`rebuild of:  ${stamped}`);
  expect(show).toMatch(/^rebuilt: +not reproducible \(job \d+ and rebuild \d+\): stamp differ$/m);

  // A failed job has nothing to compare with: refused, saying what to do instead.
  const failed = await submitJob(m, { command: ["false"] });
  expect((await waitJob(m, failed)).state).toBe("failed");
  const refused = await m.cli(["rebuild", String(failed)]);
  expect([refused.code, refused.stderr]).toEqual([1, expect.stringContaining(`kiln retry ${failed}`)]);
}, 120_000);

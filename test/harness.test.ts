import { describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { slotUid } from "../src/sandbox/uids.ts";
import { tempDir, waitFor } from "./harness.ts";
import { leftoversOf, type RoleTrace } from "./leftovers.ts";

/*
 * The leftover check must be able to fail: each kind of leftover is made here by hand, outside Kiln,
 * and the check must name it, and must not name what belongs to a role that still runs.
 */

const INTEGRATION = join(import.meta.dir, "integration");
const root = process.getuid?.() === 0;
const run = (...cmd: string[]) => {
  const p = Bun.spawnSync(cmd, { stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`${cmd.join(" ")}: ${p.stderr.toString()}`);
  return p.stdout.toString().trim();
};

test("every integration test file checks for leftovers after each test and stops its roles", () => {
  for (const f of readdirSync(INTEGRATION).filter((n) => n.endsWith(".test.ts"))) {
    const text = readFileSync(join(INTEGRATION, f), "utf8");
    expect(`${f}: ${/^checkLeftoversAfterEachTest\(\);$/m.test(text)}`).toBe(`${f}: true`);
    expect(`${f}: ${/await stopAll\(\)/.test(text)}`).toBe(`${f}: true`);
  }
});

describe("the leftover check", () => {
  test("names a process left working in a stopped role's data dir, and not one of a running role", async () => {
    using dir = tempDir("kiln-t-leftover-");
    const data = join(dir.path, "data");
    mkdirSync(data);
    // A stray `sleep` stands in for a job a dead worker left: it works in the role's data dir.
    const stray = Bun.spawn(["sleep", "60"], { cwd: data });
    try {
      const gone: RoleTrace = { pid: 999_999_999, data, workers: new Set() };
      await waitFor("the stray to start", () => readdirSync("/proc").includes(String(stray.pid)));
      const left = leftoversOf([gone], []);
      expect(left.join("\n")).toContain(`process ${stray.pid} (works in ${data})`);
      // The same process under a role that still runs is that role's business.
      const running: RoleTrace = { pid: stray.pid, data, workers: new Set() };
      expect(leftoversOf([gone], [running])).toEqual([]);
    } finally {
      stray.kill("SIGKILL");
      await stray.exited;
    }
    expect(leftoversOf([{ pid: 999_999_999, data, workers: new Set() }], [])).toEqual([]);
  });

  test.skipIf(!root)("names a mount and a loop device under a stopped role's data dir (root)", () => {
    using dir = tempDir("kiln-t-leftover-");
    const data = join(dir.path, "data");
    const mnt = join(data, "mnt");
    mkdirSync(mnt, { recursive: true });
    const image = join(data, "scratch.img");
    writeFileSync(image, "");
    run("truncate", "-s", "1M", image);
    run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt);
    const loop = run("losetup", "--find", "--show", image);
    try {
      const left = leftoversOf([{ pid: 999_999_999, data, workers: new Set() }], []);
      expect(left).toContain(`mount at ${mnt}`);
      expect(left).toContain(`loop device ${loop} on ${image}`);
    } finally {
      run("losetup", "-d", loop);
      run("umount", mnt);
    }
  });

  test.skipIf(!root)("names a cgroup and a slot-uid process of a stopped role's worker (root)", async () => {
    using dir = tempDir("kiln-t-leftover-");
    const name = `t-leftover-${process.pid}`;
    const v2 = existsSync("/sys/fs/cgroup/cgroup.controllers");
    const parent = v2 ? "/sys/fs/cgroup/kiln" : "/sys/fs/cgroup/pids/kiln";
    const hadParent = existsSync(parent);
    const mine = join(parent, name);
    mkdirSync(mine, { recursive: true });
    const uid = slotUid(1_500_000_000, name, 3);
    const job = Bun.spawn(["sleep", "60"], { uid, gid: uid });
    try {
      await waitFor("the slot's process to start", () => readdirSync("/proc").includes(String(job.pid)));
      const left = leftoversOf(
        [{ pid: 999_999_999, data: join(dir.path, "data"), workers: new Set([name]) }],
        [],
      );
      expect(left).toContain(`cgroup ${mine}`);
      expect(left.join("\n")).toContain(`process ${job.pid} (runs as a slot uid of worker ${name})`);
    } finally {
      job.kill("SIGKILL");
      await job.exited;
      rmdirSync(mine);
      // The parent may be another worker's too; it goes only if this test made it.
      if (!hadParent) rmdirSync(parent);
    }
  });
});

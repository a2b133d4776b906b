import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type JobJson,
  type Master,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";
import { saveTemplate } from "../template-seed.ts";

checkLeftoversAfterEachTest();

/*
 * Build-root templates for real: a bookworm minbase root with build-essential made by debootstrap from
 * Debian's archive, cached on the worker, used read-only as jobs' root, shared by concurrent jobs through
 * one build, extended by a script template, attached to a running job on request. Needs root.
 */

const root = process.getuid?.() === 0;
if (!root) console.error("template tests skipped: they need root (debootstrap, the sandbox)");

const dir = tempDir("kiln-templates-test-", "/var/tmp");
let m: Master;
const log = async (id: number) => (await m.cli(["logs", String(id)])).stdout;
const sh = (script: string, extra: Record<string, unknown> = {}) =>
  submitJob(m, { command: ["/bin/sh", "-c", script], ...extra });
const cache = () => join(m.data, "worker", "templates");

beforeAll(async () => {
  if (!root) return;
  // Leftovers of a crashed build: a tree without its completion mark, and a build dir. Both must go.
  const c = join(dir.path, "data", "worker", "templates");
  mkdirSync(join(c, "a".repeat(64), "root", "etc"), { recursive: true });
  mkdirSync(join(c, `${"b".repeat(64)}.building`), { recursive: true });
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "c-tpl" },
  });
  // The worker of `kiln up` sweeps before it connects; the master may answer before that.
  await waitFor("the worker c-tpl to connect", async () => {
    const r = await m.api<{ name: string; connected: boolean }[]>("GET", "/api/v1/workers");
    return r.body.some((w) => w.name === "c-tpl" && w.connected);
  });
});

afterAll(async () => {
  if (!root) return;
  await m.kill("SIGTERM");
  await stopAll();
  dir[Symbol.dispose]();
});

const C_PROGRAM = [
  "printf '#include <stdio.h>\\nint main(void) { printf(\"compiled in the template\\\\n\"); return 0; }\\n' > /tmp/hello.c",
  "gcc -O2 -o /tmp/hello /tmp/hello.c && /tmp/hello && cat /etc/debian_version && fakeroot true && echo fakeroot-ok",
].join("\n");

describe.skipIf(!root)("templates", () => {
  test("the start-up sweep removed half-built trees", () => {
    expect(readdirSync(cache())).toEqual([]);
  });

  test("a template is defined by its recipe and shown with its hash", async () => {
    const add = await m.cli([
      "template",
      "add",
      "bookworm-build",
      "--debootstrap",
      "bookworm",
      "--variant",
      "minbase",
      "--include",
      "build-essential,fakeroot",
      "--json",
    ]);
    expect(add.code).toBe(0);
    const t = JSON.parse(add.stdout);
    expect(t.hash).toMatch(/^[0-9a-f]{64}$/);
    const again = JSON.parse((await m.cli(["template", "show", "bookworm-build", "--json"])).stdout);
    expect(again.hash).toBe(t.hash);
    expect((await m.cli(["template", "ls"])).stdout).toContain("bookworm-build");
    const bad = await m.cli(["template", "add", "x", "--debootstrap", "Bookworm"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("suite must be a Debian suite name");
    const missing = await m.cli(["submit", "--root", "nosuch", "--", "true"]);
    expect(missing.stderr).toContain("no template nosuch");
  });

  test("two jobs on a cold template wait for one debootstrap build, then compile and run a C program in it", async () => {
    const ids = [
      await sh(C_PROGRAM, { root: "bookworm-build" }),
      await sh(C_PROGRAM, { root: "bookworm-build" }),
    ];
    const jobs = await Promise.all(ids.map((id) => waitJob(m, id, 600_000)));
    const logs = await Promise.all(ids.map(log));
    for (const [i, j] of jobs.entries()) {
      expect(j.state, logs[i]).toBe("succeeded");
      expect(logs[i]).toContain("compiled in the template");
      expect(logs[i]).toMatch(/^12\.\d+$/m);
      expect(logs[i]).toContain("fakeroot-ok");
    }
    expect(logs.filter((l) => l.includes("--- kiln: building template bookworm-build")).length).toBe(1);
    expect(logs.filter((l) => l.includes("--- kiln: waiting for template bookworm-build")).length).toBe(1);
    const show = JSON.parse((await m.cli(["template", "show", "bookworm-build", "--json"])).stdout);
    expect(show.cachedOn.map((c: { worker: string }) => c.worker)).toEqual(["c-tpl"]);
    // Other suites that need this tree (debian-package.test.ts) start from it instead of a debootstrap.
    saveTemplate(m.data, show.hash);
  }, 600_000);

  test("a warm template is reused without a build, read-only, and the host root is not visible", async () => {
    const id = await sh(
      "cat /etc/debian_version; /kiln/bin/kiln --version; touch /usr/x 2>&1; touch /var/tmp/x 2>&1; test -e /work && echo host-visible; echo done",
      { root: "bookworm-build" },
    );
    const job = await waitJob(m, id);
    const out = await log(id);
    expect(job.state).toBe("succeeded");
    expect(out).not.toContain("building template");
    expect(out).toContain("Read-only file system");
    expect(out).not.toContain("host-visible");
    // The same kiln binary runs in a Debian root that is not the host's.
    expect(out).toMatch(/^kiln \d+\.\d+\.\d+ /m);
  });

  test("--writable-root gives an overlay on the scratch and leaves the cached tree unchanged", async () => {
    const id = await sh("echo scribble > /var/tmp/kiln-writable && cat /var/tmp/kiln-writable", {
      root: "bookworm-build",
      writableRoot: true,
    });
    const job = await waitJob(m, id);
    expect([job.state, await log(id)]).toEqual(["succeeded", "scribble\n"]);
    const hash = JSON.parse((await m.cli(["template", "show", "bookworm-build", "--json"])).stdout).hash;
    expect(await Bun.file(join(cache(), hash, "root", "var", "tmp", "kiln-writable")).exists()).toBe(false);
    const rw = await m.cli(["submit", "--writable-root", "--", "true"]);
    expect(rw.stderr).toContain("--writable-root needs --root TEMPLATE");
  });

  test("a script template builds on its base", async () => {
    const script = join(dir.path, "extra.sh");
    writeFileSync(script, "echo built-by-script > /etc/kiln-marker\n");
    const add = await m.cli([
      "template",
      "add",
      "bookworm-extra",
      "--script",
      script,
      "--base",
      "bookworm-build",
    ]);
    expect(add.code).toBe(0);
    const id = await sh("cat /etc/kiln-marker; gcc --version | head -1", { root: "bookworm-extra" });
    const job = await waitJob(m, id, 300_000);
    const out = await log(id);
    expect(job.state, out).toBe("succeeded");
    expect(out).toContain("built-by-script");
    expect(out).toContain("gcc (Debian");
    const rm = await m.cli(["template", "rm", "bookworm-build"]);
    expect(rm.stderr).toContain("is the base of bookworm-extra");
  }, 300_000);

  test("template build makes a tree now, on the workers chosen", async () => {
    const script = join(dir.path, "more.sh");
    writeFileSync(script, "echo more > /etc/kiln-more\n");
    expect(
      (await m.cli(["template", "add", "bookworm-more", "--script", script, "--base", "bookworm-build"]))
        .code,
    ).toBe(0);
    const build = await m.cli(["template", "build", "bookworm-more", "--worker", "c-tpl"]);
    expect(build.code, build.stderr).toBe(0);
    expect(build.stdout).toContain("building bookworm-more on c-tpl");
    const { waitFor } = await import("../harness.ts");
    await waitFor(
      "bookworm-more to be cached on c-tpl",
      async () =>
        JSON.parse((await m.cli(["template", "show", "bookworm-more", "--json"])).stdout).cachedOn.length ===
        1,
      300_000,
      500,
    );
    const offline = await m.cli(["template", "build", "bookworm-more", "--worker", "nosuch"]);
    expect(offline.stderr).toContain("worker nosuch is not connected");
  }, 300_000);

  test("a running job asks for a template and sees it read-only under /kiln/templates", async () => {
    const id = await sh(
      "kiln job template bookworm-build && cat /kiln/templates/bookworm-build/etc/debian_version && touch /kiln/templates/bookworm-build/x 2>&1; echo end",
    );
    const job = await waitJob(m, id, 120_000);
    const out = await log(id);
    expect(job.state, out).toBe("succeeded");
    expect(out).toContain("/kiln/templates/bookworm-build\n");
    expect(out).toMatch(/^12\.\d+$/m);
    expect(out).toContain("Read-only file system");
  }, 120_000);

  test("a template made from a root filesystem tarball that a job produced", async () => {
    const id = await sh(
      "tar -C / --one-file-system -cf $KILN_OUT/rootfs.tar bin sbin lib lib64 usr/bin usr/sbin usr/lib/x86_64-linux-gnu/libc.so.6 usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 usr/lib/x86_64-linux-gnu/libselinux.so.1 usr/lib/x86_64-linux-gnu/libpcre2-8.so.0 usr/lib64 etc/debian_version 2>&1 | grep -v 'Removing leading' ; echo packed",
      { root: "bookworm-build", scratchBytes: 2 * 2 ** 30 },
    );
    const packed = await waitJob(m, id, 300_000);
    expect(packed.state, await log(id)).toBe("succeeded");
    const add = await m.cli(["template", "add", "from-tar", "--tarball", `${id}/rootfs.tar`]);
    expect(add.code, add.stderr).toBe(0);
    const use = await sh("cat /etc/debian_version && test -x /usr/bin/dash && echo ok-from-tarball", {
      root: "from-tar",
    });
    const job = await waitJob(m, use, 300_000);
    const out = await log(use);
    expect(job.state, out).toBe("succeeded");
    expect(out).toMatch(/^12\.\d+$/m);
    expect(out).toContain(`fetching artifact rootfs.tar of job ${id}`);
    expect(out).toContain("ok-from-tarball");
  }, 600_000);

  test("a failed build fails the waiting jobs with reason sandbox and the build log, and is not cached", async () => {
    const add = await m.cli(["template", "add", "broken", "--debootstrap", "nosuchsuite"]);
    expect(add.code).toBe(0);
    const ids = [await sh("true", { root: "broken" }), await sh("true", { root: "broken" })];
    for (const id of ids) {
      const job: JobJson = await waitJob(m, id, 120_000);
      expect([job.state, job.reason]).toEqual(["failed", "sandbox"]);
      expect(job.message).toContain("building template broken failed");
    }
    const again = await sh("true", { root: "broken" });
    expect((await waitJob(m, again, 120_000)).reason).toBe("sandbox");
    expect(readdirSync(cache()).filter((e) => e.endsWith(".building"))).toEqual([]);
    expect(JSON.parse((await m.cli(["template", "show", "broken", "--json"])).stdout).cachedOn).toEqual([]);
  }, 300_000);
});

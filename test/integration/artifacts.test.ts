import { afterAll, afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  type Role,
  startMaster,
  startWorker,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";
import { startTcpProxy, type TcpProxy } from "../tcp-proxy.ts";

checkLeftoversAfterEachTest();

/*
 * Artifacts through the compiled binary, at sizes and with faults users meet: a gigabyte in $KILN_OUT,
 * a file the master refuses, an upload cut by the network, by a killed worker and by a full master disk,
 * and downloads that resume. Workers run jobs as plain processes here (the sandbox's collection is
 * covered by its own test below, as root).
 */

const root = process.getuid?.() === 0;
const dir = tempDir("kiln-artifacts-", "/var/tmp");
const MiB = 2 ** 20;
const proxies: TcpProxy[] = [];

afterEach(async () => {
  await stopAll();
  for (const p of proxies.splice(0)) await p.stop();
});
afterAll(() => dir[Symbol.dispose]());

const PROCESS = { KILN_WORKER_RUNNER: "process" };
let n = 0;
const home = () => {
  const d = join(dir.path, `t${++n}`);
  mkdirSync(d);
  return d;
};
interface Listed {
  name: string;
  size: number;
  sha256: string;
  kind: string;
  mode: number;
}
const listed = async (m: Master, id: number) =>
  (await m.api<Listed[]>("GET", `/api/v1/jobs/${id}/artifacts`)).body;
const sha256File = async (path: string) => {
  const h = new Bun.CryptoHasher("sha256");
  for await (const c of Bun.file(path).stream()) h.update(c);
  return h.digest("hex");
};
const incoming = (m: Master) => {
  const d = join(m.data, "artifacts", "incoming");
  return existsSync(d) ? readdirSync(d).map((f) => statSync(join(d, f)).size) : [];
};
/** A job that leaves MIB mebibytes of random bytes in $KILN_OUT/NAME. */
const randomFile = (name: string, mib: number) => [
  "sh",
  "-c",
  `head -c ${mib}M /dev/urandom > "$KILN_OUT/${name}"`,
];
/** Downloads through the CLI and returns the file's sha256. */
const download = async (m: Master, cwd: string, id: number, name: string) => {
  const r = await m.cli(["download", String(id), name, "-o", join(cwd, `got-${name}`)]);
  expect(r.code).toBe(0);
  return sha256File(join(cwd, `got-${name}`));
};

describe("artifacts", () => {
  test("a 1 GiB file in $KILN_OUT reaches the master whole and comes back with the same sha256", async () => {
    // Before chunked uploads the master refused this with 413 and the job still ended succeeded.
    const d = home();
    const m = await startMaster(d);
    await startWorker(m, d, "a-big", { env: PROCESS });
    const id = await submitJob(m, {
      command: [
        "sh",
        "-c",
        'head -c 1M /dev/urandom > "$KILN_OUT/disk.img" && truncate -s 1G "$KILN_OUT/disk.img"',
      ],
    });
    const job = await waitJob(m, id, 240_000);
    expect(job).toMatchObject({ state: "succeeded", reason: null });
    const [a] = await listed(m, id);
    expect(a).toMatchObject({ name: "disk.img", size: 2 ** 30 });
    expect(await download(m, d, id, "disk.img")).toBe(a!.sha256);
    expect(incoming(m)).toEqual([]);
  }, 300_000);

  test("a file the master refuses fails the job with reason artifact_upload, and its log says which and why", async () => {
    const d = home();
    const m = await startMaster(d, { env: { KILN_MASTER_ARTIFACT_MAX: "1M" } });
    await startWorker(m, d, "a-refused", { env: PROCESS });
    const id = await submitJob(m, {
      command: ["sh", "-c", 'head -c 2M /dev/zero > "$KILN_OUT/huge.bin"; echo ok > "$KILN_OUT/small.txt"'],
    });
    const job = await waitJob(m, id, 60_000);
    expect(job).toMatchObject({ state: "failed", reason: "artifact_upload", exitCode: 0 });
    expect(job.message).toContain("huge.bin (2 MiB)");
    expect(job.message).toContain("master.artifact_max");
    const log = (await m.cli(["logs", String(id)])).stdout;
    expect(log).toContain("--- kiln: artifact not delivered: huge.bin (2 MiB): the master refused it (413");
    // The other file still arrived; the refused one is nowhere.
    expect((await listed(m, id)).map((a) => a.name)).toEqual(["small.txt"]);
    const show = await m.cli(["show", String(id)]);
    expect(show.stdout).toMatch(/reason:\s+artifact_upload/);
    expect((await m.cli(["submit", "--wait", "--", "true"])).code).toBe(0);
  }, 90_000);

  test("an upload cut by the network resumes from the master's offset instead of starting over", async () => {
    const d = home();
    const m = await startMaster(d);
    const proxy = await startTcpProxy(Number(new URL(m.url).port), { cutAfter: 24 * MiB });
    proxies.push(proxy);
    const w = await startWorker({ ...m, url: `http://127.0.0.1:${proxy.port}` }, d, "a-cut", {
      env: PROCESS,
    });
    const id = await submitJob(m, { command: randomFile("data.bin", 64) });
    const job = await waitJob(m, id, 120_000);
    expect(job.state).toBe("succeeded");
    expect(proxy.cuts()).toBe(1);
    const [a] = await listed(m, id);
    expect(a!.size).toBe(64 * MiB);
    expect(await download(m, d, id, "data.bin")).toBe(a!.sha256);
    // Starting over would have sent at least 24 + 64 MiB; resuming sends the file about once.
    expect(proxy.sent()).toBeLessThan(72 * MiB);
    expect(w.log()).toContain("cannot reach the master to deliver artifact data.bin");
  }, 150_000);

  test("a worker killed mid-upload leaves no artifact recorded, and resumes the upload when it comes back", async () => {
    const d = home();
    const m = await startMaster(d);
    const stall = await startTcpProxy(Number(new URL(m.url).port), { stallAfter: 24 * MiB });
    const resume = await startTcpProxy(Number(new URL(m.url).port));
    proxies.push(stall, resume);
    const data = join(d, "worker-a-killed");
    const w = await startWorker({ ...m, url: `http://127.0.0.1:${stall.port}` }, d, "a-killed", {
      env: PROCESS,
      data,
    });
    const id = await submitJob(m, { command: randomFile("data.bin", 64) });
    await waitFor("part of the upload to reach the master", () => incoming(m).some((s) => s >= 8 * MiB));
    await w.kill("SIGKILL");
    expect(await listed(m, id)).toEqual([]);
    const held = incoming(m)[0]!;
    const back: Role = await startWorker({ ...m, url: `http://127.0.0.1:${resume.port}` }, d, "a-killed", {
      env: PROCESS,
      data,
    });
    const job = await waitJob(m, id, 120_000);
    expect(job).toMatchObject({ state: "succeeded", attempt: 1 });
    const [a] = await listed(m, id);
    expect(await download(m, d, id, "data.bin")).toBe(a!.sha256);
    // Only what the master lacked travelled the second time.
    expect(resume.sent()).toBeLessThan(64 * MiB - held + 4 * MiB);
    expect(incoming(m)).toEqual([]);
    await back.kill("SIGTERM");
  }, 150_000);

  test.skipIf(!root)(
    "a full master disk holds the upload (507, nothing recorded) until space returns, then it completes",
    async () => {
      const d = home();
      const mnt = join(d, "small");
      mkdirSync(mnt);
      expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=96m,mode=0700", "tmpfs", mnt]).exitCode).toBe(
        0,
      );
      try {
        const m = await startMaster(mnt);
        const w = await startWorker(m, d, "a-full", { env: PROCESS });
        // Leave about 24 MiB free for a 48 MiB artifact.
        const fill = join(mnt, "fill");
        const free = () => {
          const out = Bun.spawnSync(["df", "-B1", "--output=avail", mnt]).stdout.toString();
          return Number(out.trim().split("\n")[1]);
        };
        Bun.spawnSync(["fallocate", "-l", String(free() - 24 * MiB), fill]);
        const id = await submitJob(m, { command: randomFile("data.bin", 48) });
        await waitFor("the worker to hear the disk is full", () => w.log().includes("507"), 60_000);
        const during = await m.api<{ state: string }>("GET", `/api/v1/jobs/${id}`);
        expect(["assigned", "running"]).toContain(during.body.state);
        expect(await listed(m, id)).toEqual([]);
        Bun.spawnSync(["rm", "-f", fill]);
        const job = await waitJob(m, id, 120_000);
        expect(job.state).toBe("succeeded");
        const [a] = await listed(m, id);
        expect(await download(m, d, id, "data.bin")).toBe(a!.sha256);
        expect(m.log()).toContain("the master's disk is full");
        await m.kill("SIGTERM");
      } finally {
        await stopAll();
        Bun.spawnSync(["umount", "-l", mnt]);
      }
    },
    180_000,
  );

  test("downloads keep the mode, resume a partial file, show a progress bar only on a terminal; kinds come from content", async () => {
    const d = home();
    const m = await startMaster(d);
    await startWorker(m, d, "a-dl", { env: PROCESS });
    const pkg = join(d, "pkg");
    mkdirSync(join(pkg, "DEBIAN"), { recursive: true });
    writeFileSync(
      join(pkg, "DEBIAN", "control"),
      "Package: kiln-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: K <k@example.invalid>\nDescription: p\n",
    );
    const id = await submitJob(m, {
      command: [
        "sh",
        "-c",
        [
          'cp /bin/true "$KILN_OUT/tool" && chmod 755 "$KILN_OUT/tool"',
          `dpkg-deb --build --root-owner-group ${pkg} "$KILN_OUT/named.img" >/dev/null`,
          'head -c 8M /dev/urandom > "$KILN_OUT/data.bin"',
        ].join(" && "),
      ],
    });
    expect((await waitJob(m, id, 60_000)).state).toBe("succeeded");
    const arts = await listed(m, id);
    expect(arts.map((a) => [a.name, a.kind, a.mode.toString(8)])).toEqual([
      ["data.bin", "other", "644"],
      ["named.img", "deb", "644"],
      ["tool", "other", "755"],
    ]);
    expect((await m.cli(["show", String(id)])).stdout).toContain("named.img (deb,");
    expect((await m.cli(["artifacts", String(id)])).stdout).toMatch(/named\.img\s+deb\s+0644/);

    // The mode: the tool downloaded runs.
    const r = await m.cli(["download", String(id), "tool", "-o", join(d, "tool")]);
    expect(r.code).toBe(0);
    expect(statSync(join(d, "tool")).mode & 0o777).toBe(0o755);
    expect(Bun.spawnSync([join(d, "tool")]).exitCode).toBe(0);
    // Not a terminal: no carriage returns, no bar.
    expect(r.stderr).not.toContain("\r");

    // A partial file from a cut download: the rest is fetched with a Range request.
    const data = arts.find((a) => a.name === "data.bin")!;
    const first = await fetch(`${m.url}/api/v1/jobs/${id}/artifacts/data.bin`, {
      headers: { authorization: `Bearer ${m.token}`, range: "bytes=0-3145727" },
    });
    expect(first.status).toBe(206);
    writeFileSync(join(d, "data.bin.kiln-partial"), new Uint8Array(await first.arrayBuffer()));
    const resumed = await m.cli(["download", String(id), "data.bin", "-o", join(d, "data.bin")]);
    expect(resumed.stderr).toContain("resumed at 3 MiB");
    expect(await sha256File(join(d, "data.bin"))).toBe(data.sha256);
    // A partial file of other bytes: the sha256 catches it and the download starts over once.
    writeFileSync(join(d, "other.kiln-partial"), new Uint8Array(3 * MiB));
    const over = await m.cli(["download", String(id), "data.bin", "-o", join(d, "other")]);
    expect(over.code).toBe(0);
    expect(await sha256File(join(d, "other"))).toBe(data.sha256);
    expect(existsSync(join(d, "other.kiln-partial"))).toBe(false);

    // On a terminal (script(1) gives the command a pty), the bar is drawn.
    const script = Bun.spawnSync(
      [
        "script",
        "-qec",
        `${join(import.meta.dir, "..", "..", "dist", "kiln")} download ${id} data.bin -o ${join(d, "tty.bin")}`,
        "/dev/null",
      ],
      {
        cwd: d,
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          KILN_URL: m.url,
          KILN_TOKEN: m.token,
          TERM: "dumb",
        },
      },
    );
    const shown = script.stdout.toString();
    expect(shown).toContain("data.bin [");
    expect(shown).toContain("100%");
  }, 120_000);

  test.skipIf(!root)(
    "in the sandbox, a collected or uploaded file keeps its executable bit",
    async () => {
      const d = home();
      const m = await startMaster(d);
      await startWorker(m, d, "a-sandbox", { capacity: 1 });
      const id = await submitJob(m, {
        command: [
          "sh",
          "-c",
          [
            'cp /bin/true "$KILN_OUT/tool" && chmod 750 "$KILN_OUT/tool" && echo x > "$KILN_OUT/plain"',
            "cp /bin/true /tmp/up && chmod 755 /tmp/up && /kiln/bin/kiln job upload /tmp/up --name uploaded",
          ].join(" && "),
        ],
      });
      expect((await waitJob(m, id, 60_000)).state).toBe("succeeded");
      expect((await listed(m, id)).map((a) => [a.name, a.mode.toString(8)])).toEqual([
        ["plain", "644"],
        ["tool", "750"],
        ["uploaded", "755"],
      ]);
      expect((await m.cli(["download", String(id), "tool", "-o", join(d, "tool")])).code).toBe(0);
      expect(Bun.spawnSync([join(d, "tool")]).exitCode).toBe(0);
    },
    90_000,
  );
});

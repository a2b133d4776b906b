import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  freePort,
  KILN,
  kiln,
  type Master,
  readAll,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

const dir = tempDir();
let m: Master;

beforeAll(async () => {
  m = await startMaster(dir.path, { role: "up" });
});
afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

describe("the binary", () => {
  test("--version and --help say something useful from an empty directory", async () => {
    using empty = tempDir();
    const v = await kiln(["--version"], { cwd: empty.path });
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^kiln \d+\.\d+\.\d+ \(bun 1\.4\.5/);
    const h = await kiln(["--help"], { cwd: empty.path });
    expect(h.stdout).toContain("submit");
    expect(h.stdout).toContain("worker");
    expect(h.stdout).not.toContain("\x1b[");
  });

  /** Every command the binary lists, found by walking `--help` down from the top. */
  async function allCommands(): Promise<string[][]> {
    const found: string[][] = [];
    const walk = async (path: string[]) => {
      const r = await kiln([...path, "--help"], { cwd: dir.path });
      const section = /\nCommands:\n((?: {2}.*\n)+)/.exec(r.stdout)?.[1] ?? "";
      for (const line of section.split("\n").filter(Boolean)) {
        const sub = [...path, line.trim().split(/\s+/)[0]!];
        found.push(sub);
        await walk(sub);
      }
    };
    await walk([]);
    return found;
  }

  test("every command's --help names the whole command, shows its flags as typed, and exits 0", async () => {
    const all = await allCommands();
    expect(all.length).toBeGreaterThan(25);
    for (const path of all) {
      const r = await kiln([...path, "--help"], { cwd: dir.path });
      const name = `kiln ${path.join(" ")}`;
      expect([name, r.code]).toEqual([name, 0]);
      expect(r.stdout).toContain(`Usage: ${name}`);
      expect(r.stdout).toContain("Flags:");
      // A one-letter flag is -n, never --n; descriptions are there for every flag.
      expect(r.stdout).not.toMatch(/--\w\b(?!-)/);
      for (const line of r.stdout
        .split("\nFlags:\n")[1]!
        .split("\n")
        .filter((l) => l.startsWith("  ")))
        expect([name, line.trim().split(/\s{2,}/).length]).toEqual([name, 2]);
    }
  });

  test("help says what each command takes", async () => {
    const help = async (...path: string[]) => (await kiln([...path, "--help"], { cwd: dir.path })).stdout;
    expect(await help("submit")).toContain("Usage: kiln submit [FLAGS] [-- CMD [ARG...]]");
    expect(await help("show")).toContain("Usage: kiln show [FLAGS] JOB");
    expect(await help("job", "progress")).toContain("Usage: kiln job progress PERCENT [MSG]");
    const up = await help("up");
    expect(up).not.toContain("--join");
    expect(up).not.toContain("--master");
    expect(up).toContain("-n  ");
    const worker = await help("worker");
    for (const flag of ["--arch ARCH", "--runner RUNNER", "--join-file FILE", "--master URL"])
      expect(worker).toContain(flag);
    expect(worker).toContain("1-63 lowercase letters, digits, . _ -");
    expect(await help()).toContain("--version");
  });

  test("a bare kiln, or a command group without its command, prints help to stderr and exits 2", async () => {
    for (const args of [[], ["token"], ["template"]]) {
      const r = await kiln(args, { cwd: dir.path });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("Usage: kiln");
      expect(r.stdout).toBe("");
    }
  });
});

describe("bad input gets a one-line error and a non-zero exit", () => {
  const cases: [string, string[], RegExp, number?][] = [
    ["an unknown command", ["frobnicate"], /unknown command "frobnicate"/, 2],
    ["an unknown flag", ["jobs", "--colour"], /unknown flag --colour/, 2],
    ["an unknown short flag", ["logs", "-x", "1"], /unknown flag -x/, 2],
    ["a job id that is not a number", ["show", "abc"], /"abc" is not a job id/, 2],
    ["a missing job id", ["show"], /a job id is required/, 2],
    ["an unknown job", ["show", "999999"], /no job 999999/],
    ["logs of an unknown job", ["logs", "999998"], /no job 999998/],
    ["cancel of an unknown job", ["cancel", "999997"], /no job 999997/],
    ["retry of an unknown job", ["retry", "999996"], /no job 999996/],
    ["submit with nothing to run", ["submit"], /nothing to run/, 2],
    [
      "a bad duration",
      ["submit", "--timeout", "soon", "--", "true"],
      /--timeout: "soon" is not a duration/,
      2,
    ],
    ["a bad size", ["submit", "--memory", "lots", "--", "true"], /--memory/, 2],
    [
      "a bad priority",
      ["submit", "--priority", "high", "--", "true"],
      /--priority high: must be a whole number/,
      2,
    ],
    ["a bad env", ["submit", "--env", "NOEQUALS", "--", "true"], /--env NOEQUALS: use K=V/, 2],
    [
      "a bad project name",
      ["submit", "--project", "../etc", "--", "true"],
      /^kiln: --project: must be 1-63 lowercase/,
      2,
    ],
    ["a bad channel name", ["submit", "--channel", "A B", "--", "true"], /^kiln: --channel: must be/, 2],
    [
      "a too small memory limit",
      ["submit", "--memory", "1k", "--", "true"],
      /^kiln: --memory 1k: must be at least 4M/,
      2,
    ],
    [
      "a zero timeout",
      ["submit", "--timeout", "0s", "--", "true"],
      /^kiln: --timeout 0s: must be more than 0/,
      2,
    ],
    [
      "a duration without a unit",
      ["submit", "--timeout", "2", "--", "true"],
      /--timeout: "2" needs a unit/,
      2,
    ],
    [
      "a bad state filter",
      ["jobs", "--state", "sleeping"],
      /^kiln: --state sleeping: use one of queued, assigned, running, succeeded, failed, cancelled, timed_out/,
      2,
    ],
    ["an unknown worker", ["drain", "nosuchworker"], /no worker nosuchworker/],
    ["hold without a reason", ["hold", "x"], /a reason is required/, 2],
    ["a bad worker name", ["release", "Bad/Name"], /not a valid name/, 2],
    ["a token without a role", ["token", "create"], /--role is required/, 2],
    ["a token with a bad role", ["token", "create", "--role", "god"], /role/, 2],
    [
      "a missing script",
      ["submit", "--script", "/nonexistent/build.sh"],
      /--script \/nonexistent\/build.sh/,
      2,
    ],
    ["--var without a recipe", ["submit", "--var", "a=b", "--", "true"], /--var is for a recipe/, 2],
    [
      "a recipe and a command",
      ["submit", "--recipe", "r", "--", "true"],
      /either --recipe NAME or a command/,
      2,
    ],
    [
      "a var given twice",
      ["submit", "--recipe", "r", "--var", "a=1", "--var", "a=2"],
      /--var a is given twice/,
      2,
    ],
    ["an unknown recipe", ["submit", "--recipe", "nosuchrecipe"], /no recipe nosuchrecipe/],
    ["a recipe without a file", ["recipe", "add", "r"], /--file F is required/, 2],
    [
      "a missing recipe file",
      ["recipe", "add", "r", "--file", "/nonexistent/r.toml"],
      /--file \/nonexistent/,
      2,
    ],
    ["a bad recipe name", ["recipe", "add", "Bad/Name", "--file", "/etc/hostname"], /not a valid name/, 2],
    [
      "a bad recipe version",
      ["recipe", "show", "r", "--version", "0"],
      /--version 0: use a version number/,
      2,
    ],
    ["an unknown recipe to show", ["recipe", "show", "nosuchrecipe"], /no recipe nosuchrecipe/],
  ];
  for (const [what, args, re, code] of cases) {
    test(`${what}: ${args.join(" ")}`, async () => {
      const r = await m.cli(args);
      expect(r.code).toBe(code ?? 1);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split("\n").length).toBe(1);
      expect(r.stderr).toStartWith("kiln: ");
    });
  }

  test("a master that is down", async () => {
    const r = await kiln(["jobs"], {
      cwd: dir.path,
      env: { KILN_URL: `http://127.0.0.1:${freePort()}`, KILN_TOKEN: "x" },
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /cannot reach the master at http:\/\/127\.0\.0\.1:\d+ .*is `kiln master` running\?/,
    );
  });

  test("a wrong token, and no token at all", async () => {
    const wrong = await kiln(["jobs"], { cwd: dir.path, env: { KILN_URL: m.url, KILN_TOKEN: "kiln_wrong" } });
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("the token is unknown, revoked or expired");
    using elsewhere = tempDir();
    const none = await kiln(["jobs", "--data", elsewhere.path], { cwd: dir.path, env: { KILN_URL: m.url } });
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("no token");
  });

  test("a bad --url", async () => {
    const r = await m.cli(["jobs", "--url", "not a url"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("is not a master URL");
  });

  test("the API answers bad requests with a 4xx and an error object, never a 5xx", async () => {
    const bad: [string, string, unknown][] = [
      ["POST", "/api/v1/jobs", { command: [] }],
      ["POST", "/api/v1/jobs", { command: ["true"], bogus: 1 }],
      ["POST", "/api/v1/jobs", { command: "true" }],
      ["POST", "/api/v1/jobs", { command: ["true"], needs: ["../x"] }],
      ["POST", "/api/v1/jobs", { command: ["true"], env: { "BAD-NAME": "1" } }],
      ["GET", "/api/v1/jobs/12abc", undefined],
      ["GET", "/api/v1/jobs/1/log?offset=-1", undefined],
      ["GET", "/api/v1/jobs?limit=0", undefined],
      ["POST", "/api/v1/admin/workers/..%2F..%2Fetc/hold", { reason: "x" }],
      ["DELETE", "/api/v1/admin/tokens/zz", undefined],
      ["GET", "/api/v1/nothing-here", undefined],
    ];
    for (const [method, path, body] of bad) {
      const r = await m.api<{ error: { code: string; message: string } }>(method, path, body);
      expect(r.status).toBeGreaterThanOrEqual(400);
      expect(r.status).toBeLessThan(500);
      expect(typeof r.body.error.code).toBe("string");
      expect(r.body.error.message.length).toBeGreaterThan(5);
    }
    const notJson = await fetch(`${m.url}/api/v1/jobs`, {
      method: "POST",
      headers: { authorization: `Bearer ${m.token}` },
      body: "{",
    });
    expect(notJson.status).toBe(400);
    const noToken = await fetch(`${m.url}/api/v1/jobs`);
    expect(noToken.status).toBe(401);
  });

  test("roles limit what a token can do", async () => {
    const viewer = JSON.parse((await m.cli(["token", "create", "--role", "viewer", "--json"])).stdout).token;
    const denied = await kiln(["submit", "--", "true"], {
      cwd: dir.path,
      env: { KILN_URL: m.url, KILN_TOKEN: viewer },
    });
    expect(denied.code).toBe(1);
    expect(denied.stderr).toContain("needs the submitter role");
    const listed = await kiln(["jobs"], { cwd: dir.path, env: { KILN_URL: m.url, KILN_TOKEN: viewer } });
    expect(listed.code).toBe(0);
    const tokens = JSON.parse((await m.cli(["token", "ls", "--json"])).stdout) as {
      id: string;
      role: string;
    }[];
    const id = tokens.find((t) => t.role === "viewer")!.id;
    expect((await m.cli(["token", "revoke", id])).code).toBe(0);
    const revoked = await kiln(["jobs"], { cwd: dir.path, env: { KILN_URL: m.url, KILN_TOKEN: viewer } });
    expect(revoked.stderr).toContain("unknown, revoked or expired");
  });

  test("the CLI on the master's host uses DATA/admin.token, which is mode 0600", async () => {
    const r = await kiln(["jobs", "--data", m.data, "--json"], { cwd: dir.path, env: { KILN_URL: m.url } });
    expect(r.code).toBe(0);
    const mode = (await import("node:fs")).statSync(join(m.data, "admin.token")).mode & 0o777;
    expect(mode).toBe(0o600);
  });
});

describe("config", () => {
  test("an unknown key in the config file is refused, naming the key and the file", async () => {
    const file = join(dir.path, "bad.toml");
    writeFileSync(file, '[master]\nlisten = "127.0.0.1:1"\nlisen = "oops"\n');
    const r = await kiln(["master", "--config", file, "--data", join(dir.path, "d1")], { cwd: dir.path });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${file}: unknown key master.lisen`);
  });

  test("a wrong type and a bad value are refused", async () => {
    const file = join(dir.path, "bad2.toml");
    writeFileSync(file, '[worker]\ncapacity = "many"\n');
    const r = await kiln(["worker", "--config", file, "--data", join(dir.path, "d2")], { cwd: dir.path });
    expect(r.stderr).toContain(`${file}: worker.capacity must be an integer`);
    writeFileSync(file, '[master]\nlease = "forever"\n');
    const r2 = await kiln(["master", "--config", file, "--data", join(dir.path, "d2")], { cwd: dir.path });
    expect(r2.stderr).toContain("master.lease");
    const r3 = await kiln(["master", "--data", join(dir.path, "d3"), "--listen", "nowhere"], {
      cwd: dir.path,
    });
    expect(r3.stderr).toContain("--listen must be HOST:PORT");
    // A bad flag value is a usage error; a bad file is a configuration error.
    expect([r3.code, r.code, r2.code]).toEqual([2, 1, 1]);
    const r5 = await kiln(["master", "--data", join(dir.path, "d3"), "--log-level", "bogus"], {
      cwd: dir.path,
    });
    expect([r5.code, r5.stderr]).toEqual([
      2,
      expect.stringContaining("--log-level must be one of error, warn"),
    ]);
    const r4 = await kiln(["master", "--data", join(dir.path, "d3")], {
      cwd: dir.path,
      env: { KILN_MASTER_LISTN: "x" },
    });
    expect(r4.stderr).toContain("unknown variable KILN_MASTER_LISTN");
  });

  test("flags beat env beat file", async () => {
    const file = join(dir.path, "layer.toml");
    const [p1, p2, p3] = [freePort(), freePort(), freePort()];
    writeFileSync(file, `[master]\nlisten = "127.0.0.1:${p1}"\n`);
    using d = tempDir();
    const viaFlag = await startMaster(d.path, {
      args: ["--config", file],
      env: { KILN_MASTER_LISTEN: `127.0.0.1:${p2}` },
      port: p3,
    });
    expect((await fetch(`http://127.0.0.1:${p3}/healthz`)).ok).toBe(true);
    await viaFlag.kill("SIGTERM");
    const env = Bun.spawn([KILN, "master", "--config", file, "--data", join(d.path, "e")], {
      env: { PATH: process.env.PATH!, KILN_MASTER_LISTEN: `127.0.0.1:${p2}`, KILN_LOG_FORMAT: "json" },
      stderr: "pipe",
    });
    await waitFor("env listen", async () => (await fetch(`http://127.0.0.1:${p2}/healthz`)).ok);
    env.kill("SIGTERM");
    expect(await env.exited).toBe(0);
  });

  test("a second master on the same port says why it cannot start", async () => {
    const port = Number(new URL(m.url).port);
    const r = await kiln(["master", "--data", join(dir.path, "d4"), "--listen", `127.0.0.1:${port}`], {
      cwd: dir.path,
    });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`cannot listen on 127.0.0.1:${port}`);
  });
});

test("a job submitted through the CLI runs with its resources recorded", async () => {
  const r = await m.cli([
    "submit",
    "--json",
    "--memory",
    "64M",
    "--cpus",
    "0.5",
    "--pids",
    "64",
    "--scratch",
    "16M",
    "--",
    "true",
  ]);
  const { id } = JSON.parse(r.stdout);
  const job = await waitJob(m, id);
  const view = JSON.parse((await m.cli(["show", String(id), "--json"])).stdout);
  expect(job.state).toBe("succeeded");
  expect(view.resources).toMatchObject({
    memoryBytes: 64 << 20,
    cpus: 0.5,
    pids: 64,
    scratchBytes: 16 << 20,
    root: "host",
  });
  expect(await submitJob(m, { command: ["true"] })).toBeGreaterThan(id);
});

describe("the store", () => {
  test("--db takes a libSQL URL through the same code path as the embedded default", async () => {
    using d = tempDir();
    const dbFile = join(d.path, "elsewhere.db");
    const other = await startMaster(d.path, { args: ["--db", `file:${dbFile}`], name: "db-url" });
    const id = (await other.api<{ id: number }>("POST", "/api/v1/jobs", { command: ["true"] })).body.id;
    expect(id).toBe(1);
    await other.kill("SIGTERM");
    expect(await Bun.file(dbFile).exists()).toBe(true);
    expect(await Bun.file(join(other.data, "kiln.db")).exists()).toBe(false);
    const down = await kiln(
      [
        "master",
        "--data",
        join(d.path, "x"),
        "--db",
        "http://user:secret@127.0.0.1:1",
        "--listen",
        `127.0.0.1:${freePort()}`,
      ],
      {
        cwd: d.path,
      },
    );
    expect(down.code).toBe(1);
    expect(down.stderr).toContain("cannot open the store at http://127.0.0.1:1");
    expect(down.stderr).not.toContain("secret");
    const bad = await kiln(["master", "--data", join(d.path, "y"), "--db", "postgres://x"], { cwd: d.path });
    expect(bad.stderr).toContain("--db postgres://x: use a libsql://");
  });

  test("a relative --data is taken from the directory the master starts in", async () => {
    using d = tempDir();
    const port = freePort();
    const p = Bun.spawn([KILN, "master", "--data", "rel/data", "--listen", `127.0.0.1:${port}`], {
      cwd: d.path,
      env: { PATH: process.env.PATH!, KILN_LOG_FORMAT: "json" },
      stderr: "pipe",
      stdout: "ignore",
    });
    const stderr = readAll(p.stderr);
    try {
      await waitFor("the master with a relative --data", async () => {
        if (p.exitCode !== null) throw new Error(`the master exited ${p.exitCode}: ${stderr.text()}`);
        return (await fetch(`http://127.0.0.1:${port}/readyz`)).ok;
      });
      const token = (await Bun.file(join(d.path, "rel", "data", "admin.token")).text()).trim();
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/jobs`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ command: ["true"] }),
      });
      expect(res.status).toBe(201);
    } finally {
      p.kill("SIGTERM");
      await p.exited;
    }
  });

  test.skipIf(process.getuid?.() !== 0)(
    "the binary works with a noexec /tmp: the store library is unpacked into the data dir",
    async () => {
      using d = tempDir("kiln-noexec-", "/var/tmp");
      const port = freePort();
      const data = join(d.path, "data");
      // The tmpfs hides everything under /tmp, this checkout's dist/ too when it lives there: run a copy.
      const bin = join(d.path, "kiln");
      copyFileSync(KILN, bin);
      chmodSync(bin, 0o755);
      const p = Bun.spawn(
        [
          "unshare",
          "-m",
          "--propagation",
          "private",
          "sh",
          "-c",
          `mount -t tmpfs -o noexec,nosuid none /tmp && exec ${bin} master --data ${data} --listen 127.0.0.1:${port}`,
        ],
        { env: { PATH: process.env.PATH!, KILN_LOG_FORMAT: "json" }, stderr: "pipe", stdout: "ignore" },
      );
      try {
        await waitFor("the master behind a noexec /tmp", async () => {
          if (p.exitCode !== null) throw new Error(`the master exited ${p.exitCode}`);
          return (await fetch(`http://127.0.0.1:${port}/readyz`)).ok;
        });
        const token = (await Bun.file(join(data, "admin.token")).text()).trim();
        const res = await fetch(`http://127.0.0.1:${port}/api/v1/jobs`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ command: ["true"] }),
        });
        expect(res.status).toBe(201);
        const unpacked = (await import("node:fs")).readdirSync(join(data, "tmp"));
        expect(unpacked.some((f) => f.endsWith(".node"))).toBe(true);
      } finally {
        p.kill("SIGTERM");
        await p.exited;
      }
    },
  );
});

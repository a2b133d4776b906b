import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  baseEnv,
  checkLeftoversAfterEachTest,
  type JobJson,
  KILN,
  type Master,
  readAll,
  spawnRole,
  startMaster,
  startWorker,
  stopAll,
  tempDir,
  waitFor,
  waitJob,
} from "../harness.ts";

checkLeftoversAfterEachTest();

/*
 * Credentials and secrets on the compiled binary: `kiln token create|ls|revoke`, revocation that reaches
 * open connections (a worker's socket, a client's `kiln logs -f`), `kiln audit`, and secrets (tokens,
 * `--secret` values, job credentials) that appear in no role's log, no view of a job, and not in another
 * job's sandbox. The test dir is under /var/tmp and opened to everyone, so what keeps a job out of Kiln's
 * files is Kiln's own doing (masks, modes), not the test's private temp dir.
 */

const root = process.getuid?.() === 0;
const dir = tempDir("kiln-sec-", "/var/tmp");
chmodSync(dir.path, 0o755);
let m: Master;

afterAll(async () => {
  await stopAll();
  dir[Symbol.dispose]();
});

const json = <T>(text: string) => JSON.parse(text) as T;
/** Every token secret the tests made, for the search of the logs at the end. */
const created: string[] = [];

describe("tokens", () => {
  test("the master starts with debug logs", async () => {
    m = await startMaster(dir.path, { args: ["--log-level", "debug"] });
  });

  test("token create, ls and revoke; a revoked client's kiln logs -f ends with the reason", async () => {
    await startWorker(m, dir.path, "sec-a", {
      capacity: 1,
      args: ["--log-level", "debug"],
      env: { KILN_WORKER_RUNNER: "process" },
    });
    const made = json<{ id: string; token: string }>(
      (await m.cli(["token", "create", "--role", "viewer", "--name", "follower", "--ttl", "1h", "--json"]))
        .stdout,
    );
    expect(made.token).toStartWith("kiln_");
    created.push(made.token);
    const ls = await m.cli(["token", "ls", "--json"]);
    const mine = json<{ id: string; name: string; role: string; expiresAt: string; revoked: boolean }[]>(
      ls.stdout,
    ).find((t) => t.id === made.id)!;
    expect([mine.name, mine.role, mine.revoked, Date.parse(mine.expiresAt) > Date.now()]).toEqual([
      "follower",
      "viewer",
      false,
      true,
    ]);
    const human = await m.cli(["token", "ls"]);
    expect(human.stdout).toContain("follower");
    expect(human.stdout + ls.stdout).not.toContain(made.token);

    const { id } = json<{ id: number }>(
      (await m.cli(["submit", "--json", "--", "sh", "-c", "echo started; exec sleep 600"])).stdout,
    );
    const follower = Bun.spawn([KILN, "logs", "-f", String(id)], {
      cwd: dir.path,
      env: baseEnv({ KILN_URL: m.url, KILN_TOKEN: made.token }),
      stdout: "pipe",
      stderr: "pipe",
    });
    const out = readAll(follower.stdout);
    const err = readAll(follower.stderr);
    await waitFor("the follower to print the job's first line", () => out.text().includes("started"));
    const revoked = await m.cli(["token", "revoke", made.id]);
    expect([revoked.code, revoked.stdout]).toEqual([0, `revoked ${made.id} (1 open connection closed)\n`]);
    // The job still runs: the follow ends because the token is gone, and says so.
    expect(await follower.exited).toBe(1);
    await err.done;
    expect(err.text()).toContain("the token is unknown, revoked or expired");
    const again = await m.cli(["token", "revoke", made.id]);
    expect(again.code).toBe(1);
    expect((await m.cli(["token", "ls", "--json"])).stdout).toContain(`"revoked": true`);
    expect((await m.cli(["cancel", String(id)])).code).toBe(0);
  });

  test("revoking a worker's token disconnects it, and the worker's log says what to do", async () => {
    const made = json<{ id: string; token: string }>(
      (await m.cli(["token", "create", "--role", "worker", "--name", "w-doomed", "--json"])).stdout,
    );
    created.push(made.token);
    const w = spawnRole(
      [
        "worker",
        "--master",
        m.url,
        "--join",
        made.token,
        "--name",
        "w-doomed",
        "--data",
        join(dir.path, "w-doomed"),
      ],
      { cwd: dir.path, name: "worker-w-doomed", env: { KILN_WORKER_RUNNER: "process" } },
    );
    const connected = async () =>
      json<{ name: string; connected: boolean }[]>((await m.cli(["workers", "--json"])).stdout).find(
        (x) => x.name === "w-doomed",
      )?.connected;
    await waitFor("w-doomed to connect", connected);
    expect((await m.cli(["token", "revoke", made.id])).code).toBe(0);
    await waitFor("w-doomed to be disconnected", async () => (await connected()) === false);
    await waitFor("the worker to say its token is refused", () =>
      w.log().includes("refused this worker's token (401)"),
    );
    expect(m.log()).toContain("closing the connection of worker w-doomed: the token was revoked");
    await w.kill("SIGTERM");
  });

  test("an expired token is refused like an unknown one", async () => {
    const made = json<{ token: string }>(
      (await m.cli(["token", "create", "--role", "viewer", "--ttl", "1500ms", "--json"])).stdout,
    );
    await waitFor("the token to expire", async () => {
      const r = await m.cli(["jobs"], { KILN_TOKEN: made.token });
      return r.code === 1 && r.stderr.includes("unknown, revoked or expired");
    });
  });

  test("kiln audit shows who did what, newest first; --since, --limit and --json; admins only", async () => {
    const all = json<{ action: string; tokenName: string; target: string }[]>(
      (await m.cli(["audit", "--json", "--limit", "1000"])).stdout,
    );
    const actions = all.map((e) => e.action);
    expect(actions).toContain("token.create");
    expect(actions).toContain("token.revoke");
    expect(actions).toContain("job.submit");
    expect(actions).toContain("job.cancel");
    expect(all[0]!.tokenName).toBe("admin");
    const two = json<unknown[]>((await m.cli(["audit", "--json", "--limit", "2"])).stdout);
    expect(two).toEqual(all.slice(0, 2));
    expect(
      json<unknown[]>((await m.cli(["audit", "--json", "--since", "2999-01-01T00:00:00Z"])).stdout),
    ).toEqual([]);
    expect(json<unknown[]>((await m.cli(["audit", "--json", "--since", "1h"])).stdout).length).toBe(
      all.length,
    );
    const human = await m.cli(["audit", "--limit", "3"]);
    expect(human.stdout.split("\n")[0]).toMatch(/^ID\s+TIME\s+WHO\s+ACTION\s+TARGET\s+DETAIL$/);
    const viewer = json<{ token: string }>(
      (await m.cli(["token", "create", "--role", "viewer", "--json"])).stdout,
    ).token;
    const refused = await m.cli(["audit"], { KILN_TOKEN: viewer });
    expect([refused.code, refused.stderr]).toEqual([1, expect.stringContaining("needs the admin role")]);
    // The operator reads who was refused what, and why, in the master's log.
    await waitFor("the refusal in the master's log", () =>
      /refused GET \/api\/v1\/audit for token viewer \([0-9a-f]{12}, viewer\): 403 FORBIDDEN: this needs the admin role/.test(
        m.log(),
      ),
    );
    expect((await m.cli(["audit", "--since", "yesterday"])).code).toBe(2);
  });
});

describe.skipIf(!root)("secrets", () => {
  const marker = "kiln-test-secret-";
  const deployKey = `${marker}${crypto.randomUUID().replaceAll("-", "")}`;
  const fromEnv = `${marker}${crypto.randomUUID().replaceAll("-", "")}`;
  const sha = (s: string) => new Bun.CryptoHasher("sha256").update(s).digest("hex");
  let a = 0;
  let b = 0;

  test("a job gets its --secret values in its environment; another job, on the same worker, sees none", async () => {
    // Its own channel: the process-runner worker above must not take these jobs.
    await startWorker(m, dir.path, "sec-s", {
      capacity: 2,
      channels: "secure",
      args: ["--log-level", "debug"],
    });
    // A control file the second job can read, holding the marker: its search is shown to find it.
    writeFileSync(join(dir.path, "control.txt"), `${marker}control\n`, { mode: 0o644 });
    const sub = await m.cli(
      [
        "submit",
        "--json",
        "--channel",
        "secure",
        "--secret",
        `DEPLOY_KEY=${deployKey}`,
        "--secret",
        "FROM_ENV",
        "--",
        "sh",
        "-c",
        // The same probe of /proc the neighbour runs below, shown here to find what a job can read.
        `printf %s "$DEPLOY_KEY" | sha256sum; printf %s "$FROM_ENV" | sha256sum; echo procs=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ${marker}); echo count=$(env | grep -c ${marker}); exec sleep 600`,
      ],
      { FROM_ENV: fromEnv },
    );
    expect(sub.code).toBe(0);
    a = json<{ id: number }>(sub.stdout).id;
    await waitFor("job A to have its secrets", async () => {
      const r = await fetch(`${m.url}/api/v1/jobs/${a}/log`, {
        headers: { authorization: `Bearer ${m.token}` },
      });
      return (await r.text()).includes("count=2");
    });
    const logA = await (
      await fetch(`${m.url}/api/v1/jobs/${a}/log`, { headers: { authorization: `Bearer ${m.token}` } })
    ).text();
    expect(logA).toContain(sha(deployKey));
    expect(logA).toContain(sha(fromEnv));
    expect(Number(/procs=(\d+)/.exec(logA)?.[1])).toBeGreaterThan(0);
    // On the host, A's spec (with its secrets) is where a neighbour would look for it.
    const specs = join(dir.path, "worker-sec-s", "worker", "jobs", `${a}.1`, "spec.json");
    expect(readFileSync(specs, "utf8")).toContain(deployKey);

    const probe = [
      `echo env=$(env | grep -c ${marker})`,
      // Every process the job can see, its own pid 1 included (which it may not be allowed to read).
      `echo procs=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c ${marker})`,
      `for f in ${specs} ${join(m.data, "kiln.db")} ${join(m.data, "admin.token")}; do cat "$f" >/dev/null 2>&1 && echo "read $f"; done`,
      // Where a neighbour could look: this test's dir (Kiln's data dirs are in it) and the host's config
      // and runtime dirs; not all of /var/tmp, which other tests fill with gigabytes.
      `grep -rhoa -D skip '${marker}[A-Za-z0-9]*' ${dir.path} /etc /run /home /srv 2>/dev/null | sort -u`,
      "echo probed",
    ].join("; ");
    b = json<{ id: number }>(
      (await m.cli(["submit", "--json", "--channel", "secure", "--", "sh", "-c", probe])).stdout,
    ).id;
    const jobB = await waitJob(m, b, 60_000);
    expect(jobB.state).toBe("succeeded");
    const logB = (await m.cli(["logs", String(b)])).stdout;
    expect(logB).toContain("probed");
    expect(logB).toContain(`${marker}control`);
    expect(logB).toContain("env=0\nprocs=0\n");
    expect(logB).not.toContain("read ");
    for (const s of [deployKey, fromEnv]) expect(logB).not.toContain(s);
    expect((await m.cli(["cancel", String(a)])).code).toBe(0);
    await waitJob(m, a);
  });

  test("a retry runs with the same secrets, and show names them without their values", async () => {
    const retried = await m.cli(["retry", "--json", String(a)]);
    const copy = json<{ id: number }>(retried.stdout).id;
    await waitFor("the retry to have its secrets", async () =>
      (await m.cli(["logs", String(copy)])).stdout.includes("count=2"),
    );
    const show = await m.cli(["show", String(copy)]);
    expect(show.stdout).toContain("secrets:     DEPLOY_KEY, FROM_ENV (values not shown)");
    expect((await m.cli(["cancel", String(copy)])).code).toBe(0);
    await waitJob(m, copy);
  });

  test("no secret appears in any role's log, a job's views, the job list, its events or the audit log", async () => {
    const secrets = [deployKey, fromEnv, m.token, await m.workerToken(), ...created];
    const views: string[] = [];
    for (const id of [a, b]) {
      views.push(
        (await m.cli(["show", String(id)])).stdout,
        (await m.cli(["show", "--json", String(id)])).stdout,
      );
      views.push(JSON.stringify((await m.api("GET", `/api/v1/jobs/${id}/events`)).body));
      views.push(JSON.stringify((await m.api<JobJson>("GET", `/api/v1/jobs/${id}`)).body));
    }
    views.push(
      (await m.cli(["jobs", "--json"])).stdout,
      (await m.cli(["audit", "--json", "--limit", "1000"])).stdout,
    );
    expect(views.join("\n")).toContain("DEPLOY_KEY");
    const logs = readdirSync(dir.path)
      .filter((f) => /\.log(\.err)?$/.test(f))
      .map((f) => [f, readFileSync(join(dir.path, f), "utf8")] as const);
    expect(logs.map(([f]) => f)).toContain("master.log.err");
    // The roles logged at debug level, and said plenty.
    expect(logs.map(([, t]) => t).join("").length).toBeGreaterThan(2000);
    for (const s of secrets) {
      for (const [f, text] of logs) expect([f, text.includes(s)]).toEqual([f, false]);
      expect(views.join("\n").includes(s)).toBe(false);
    }
    // A job's credential is never logged either, whichever job it was.
    for (const [f, text] of logs) expect([f, text.includes("kilnjob_")]).toEqual([f, false]);
    expect(existsSync(join(m.data, "admin.token"))).toBe(true);
  });
});

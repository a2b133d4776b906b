import { afterEach, beforeEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JobSpec } from "../protocol/job.ts";
import type { RepoSource } from "../protocol/repo-sources.ts";
import { repoSourcesScript, withRepoSources } from "./repo-sources.ts";

/*
 * The sources a job's setup writes for the repositories it uses, run by a real /bin/sh into a directory
 * standing for the job's root: what apt and dnf find there, byte for byte, whatever the key holds.
 */

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-repo-sources-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

// A key is armoured text; this one also holds what a shell would expand or end a quote with.
const KEY =
  "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ'$(touch /tmp/pwned)`id`\"\\n\n=abcd\n-----END PGP PUBLIC KEY BLOCK-----\n";
const deb: RepoSource = { name: "tools", format: "deb", dist: "bookworm", component: "main", key: KEY };
const rpm: RepoSource = { name: "el-tools", format: "rpm", dist: null, component: null, key: KEY };

const spec = (over: Partial<JobSpec>): JobSpec =>
  ({
    root: "bookworm-build",
    writableRoot: true,
    setup: null,
    useRepos: [],
    repoSources: [],
    ...over,
  }) as JobSpec;

async function run(script: string) {
  const p = Bun.spawn(["/bin/sh", "-ec", script], {
    env: { KILN_API: "http://127.0.0.1:7070", PATH: "/usr/bin:/bin" },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  return { out, err, code };
}

test("a deb repository gets a deb822 source through the job's API proxy, signed by its own key, and the key as it was", async () => {
  const r = await run(repoSourcesScript({ useRepos: ["tools"], repoSources: [deb] }, dir));
  expect(r).toEqual({
    code: 0,
    err: "",
    out: "kiln: repository tools (deb) from http://127.0.0.1:7070/repos/tools/: /etc/apt/sources.list.d/kiln-tools.sources, key /etc/apt/keyrings/kiln-tools.asc\n",
  });
  expect(readFileSync(join(dir, "etc/apt/sources.list.d/kiln-tools.sources"), "utf8")).toBe(
    [
      "Types: deb",
      "URIs: http://127.0.0.1:7070/repos/tools/",
      "Suites: bookworm",
      "Components: main",
      "Signed-By: /etc/apt/keyrings/kiln-tools.asc",
      "",
    ].join("\n"),
  );
  expect(readFileSync(join(dir, "etc/apt/keyrings/kiln-tools.asc"), "utf8")).toBe(KEY);
  // apt reads the key as its unprivileged _apt user.
  expect(statSync(join(dir, "etc/apt/keyrings/kiln-tools.asc")).mode & 0o777).toBe(0o644);
});

test("an rpm repository gets a .repo file whose metadata must verify against its key file", async () => {
  const r = await run(repoSourcesScript({ useRepos: ["el-tools"], repoSources: [rpm] }, dir));
  expect(r.code).toBe(0);
  expect(readFileSync(join(dir, "etc/yum.repos.d/kiln-el-tools.repo"), "utf8")).toBe(
    [
      "[kiln-el-tools]",
      "name=Kiln repository el-tools",
      "baseurl=http://127.0.0.1:7070/repos/el-tools/",
      "enabled=1",
      "gpgcheck=0",
      "repo_gpgcheck=1",
      "metadata_expire=300",
      "gpgkey=file:///etc/pki/rpm-gpg/kiln-el-tools.asc",
      "",
    ].join("\n"),
  );
  expect(readFileSync(join(dir, "etc/pki/rpm-gpg/kiln-el-tools.asc"), "utf8")).toBe(KEY);
});

test("a repository gone since the submit is said in the setup's output, and the others are written", async () => {
  const r = await run(repoSourcesScript({ useRepos: ["gone", "tools"], repoSources: [deb] }, dir));
  expect(r.code).toBe(0);
  expect(r.err).toContain("kiln: repository gone was removed");
  expect(readFileSync(join(dir, "etc/apt/keyrings/kiln-tools.asc"), "utf8")).toBe(KEY);
});

test("the sources go before the recipe's setup, on a writable template root only", () => {
  const s = withRepoSources(
    spec({ useRepos: ["tools"], repoSources: [deb], setup: "apt-get install -y x\n" }),
  );
  expect(s.setup!.indexOf("kiln-tools.sources")).toBeGreaterThan(0);
  expect(s.setup!.endsWith("apt-get install -y x\n")).toBe(true);
  // A job without a setup of its own gets one that writes the sources.
  expect(withRepoSources(spec({ useRepos: ["tools"], repoSources: [deb] })).setup).toContain(
    "kiln-tools.sources",
  );
  // The host root is never writable: nothing is written, the job keeps its spec.
  const host = spec({ root: "host", writableRoot: false, useRepos: ["tools"], repoSources: [deb] });
  expect(withRepoSources(host)).toBe(host);
  const plain = spec({ setup: "true" });
  expect(withRepoSources(plain)).toBe(plain);
});

test("sources and setup that would not fit in one launcher argument fail the job, saying why", () => {
  const huge = spec({
    useRepos: ["tools"],
    repoSources: [{ ...deb, key: "k".repeat(100_000) }],
    setup: "x".repeat(40_000),
  });
  expect(() => withRepoSources(huge)).toThrow(/REPO_SOURCES_TOO_LARGE|more than the 131071 a setup may/);
});

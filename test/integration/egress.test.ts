import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  checkLeftoversAfterEachTest,
  type Master,
  startMaster,
  stopAll,
  submitJob,
  tempDir,
  waitJob,
} from "../harness.ts";
import { type NetnsUpstream, netnsLeftovers, startNetnsUpstream } from "../upstream-netns.ts";

checkLeftoversAfterEachTest();

/*
 * The egress proxy against real upstreams: an HTTP server of the test's own in a network namespace
 * (test/upstream-netns.ts; the proxy refuses loopback upstreams on purpose), and once Debian's mirror. Large bodies both ways, slow readers on both sides, checksums compared, the worker's memory
 * watched. Needs root; skips and says so otherwise.
 */

const root = process.getuid?.() === 0;
if (!root) console.error("egress tests skipped: they need root (sandbox, network namespaces)");

const MiB = 1 << 20;
const BODY = 128 * MiB;
// Slower than the proxy can relay, so its queues toward each slow reader fill up.
const SLOW = 16 * MiB;
const TAG = "be"; // this file's network namespace and links carry it

const dir = tempDir("kiln-egress-test-", "/var/tmp");
const blob = join(dir.path, "blob.bin");
let blobSha = "";
let net: NetnsUpstream | null = null;
let upstream = "";
let m: Master;

const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");

beforeAll(async () => {
  if (!root) return;
  const bytes = new Uint8Array(BODY);
  for (let i = 0; i < BODY; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  writeFileSync(blob, bytes);
  blobSha = sha(bytes);
  net = await startNetnsUpstream(blob, SLOW, TAG);
  upstream = net.address;
  m = await startMaster(dir.path, {
    role: "up",
    name: "up",
    env: { KILN_WORKER_CAPACITY: "2", KILN_WORKER_NAME: "b-egress" },
  });
}, 60_000);

afterAll(async () => {
  if (!root) return;
  await net?.stop();
  await stopAll();
  dir[Symbol.dispose]();
  expect(netnsLeftovers(`${TAG}${process.pid % 100000}`)).toEqual([]);
});

const client = readFileSync(join(import.meta.dir, "egress-client.py"), "utf8");

/** Submits a job that runs the egress client once per line of `runs` (its arguments). */
const runClient = (runs: string[], extra: Record<string, unknown> = {}) =>
  submitJob(m, {
    command: [
      "/bin/bash",
      "-c",
      `set -e; head -c ${BODY} /dev/urandom > /tmp/up.bin; sha256sum /tmp/up.bin\n${runs
        .map((r) => `python3 -c "$CLIENT" ${r}`)
        .join("\n")}`,
    ],
    env: { CLIENT: client },
    egress: [upstream],
    ...extra,
  });

const rss = (pid: number, field: "VmRSS" | "VmHWM") =>
  Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) *
  1024;

describe.skipIf(!root)("egress", () => {
  test("128 MiB down and up, over plain http and CONNECT, arrive intact with slow readers on both sides, and the worker's memory stays bounded", async () => {
    const pid = m.proc.pid;
    // Resets the peak RSS to the current RSS (proc(5), /proc/PID/clear_refs), so VmHWM is this test's peak.
    writeFileSync(`/proc/${pid}/clear_refs`, "5");
    const base = rss(pid, "VmRSS");
    const url = `http://${upstream}`;
    // The half-closing client reads as fast as it can: with its EOF already sent, only the answer flows.
    const id = await runClient([
      `down absolute ${url}/blob --rate ${SLOW}`,
      `down connect ${url}/blob --rate ${SLOW}`,
      `down halfclose ${url}/blob`,
      `up absolute ${url}/sink /tmp/up.bin`,
      `up connect ${url}/sink /tmp/up.bin`,
    ]);
    const job = await waitJob(m, id, 240_000);
    const peak = rss(pid, "VmHWM");
    const out = (await m.cli(["logs", String(id)])).stdout;
    expect({ state: job.state, log: job.state === "succeeded" ? "" : out }).toEqual({
      state: "succeeded",
      log: "",
    });
    const upSha = out.split(" ")[0]!;
    const results = out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map(
        (l) => JSON.parse(l) as { op: string; mode: string; bytes: number; sha256: string; error?: string },
      );
    expect(results.map((r) => [r.op, r.mode, r.bytes, r.sha256, r.error ?? null])).toEqual([
      ["down", "absolute", BODY, blobSha, null],
      ["down", "connect", BODY, blobSha, null],
      ["down", "halfclose", BODY, blobSha, null],
      ["up", "absolute", BODY, upSha, null],
      ["up", "connect", BODY, upSha, null],
    ]);
    // A relay that buffered for its slow reader holds most of a body (one that never paused grew by
    // 160 MiB here); one that pauses holds a few reads, and grew by 40 to 51 MiB, mostly garbage the
    // collector had not taken back yet.
    console.error(`worker RSS: ${base >> 20} MiB before, peak ${peak >> 20} MiB during the transfers`);
    expect(peak - base).toBeLessThan((BODY * 3) / 4);
  }, 300_000);

  test("an upstream that resets its connection mid-answer resets the job's connection too, over plain http and CONNECT", async () => {
    const url = `http://${upstream}/cut`;
    const id = await runClient([`down absolute ${url}`, `down connect ${url}`]);
    const job = await waitJob(m, id, 120_000);
    const out = (await m.cli(["logs", String(id)])).stdout;
    expect(job.state).toBe("succeeded");
    const results = out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { mode: string; bytes: number; error: string | null });
    // A clean EOF here would pass a cut body off as a short but complete one.
    expect(results.map((r) => [r.mode, r.error, r.bytes < BODY])).toEqual([
      ["absolute", "ConnectionResetError", true],
      ["connect", "ConnectionResetError", true],
    ]);
  }, 180_000);

  test("apt-get update and apt-get download hello through --egress deb.debian.org, as the job's own user, give a .deb whose sha256 is the index's; a 12 MB index over https arrives intact", async () => {
    // apt's state, lists and cache on the job's /tmp, its own sources list, no translations: nothing of
    // the host's apt is written, and only deb.debian.org is asked.
    const script = `set -e
mkdir -p /tmp/apt/lists/partial /tmp/apt/cache/archives/partial /tmp/apt/parts
echo "deb http://deb.debian.org/debian bookworm main" > /tmp/apt/sources.list
A="-o Dir::State=/tmp/apt -o Dir::State::Lists=/tmp/apt/lists -o Dir::Cache=/tmp/apt/cache -o Dir::Etc::SourceList=/tmp/apt/sources.list -o Dir::Etc::SourceParts=/tmp/apt/parts -o Acquire::Languages=none -o Debug::NoLocking=1"
id -u
apt-get $A -q update
cd /tmp
apt-get $A -q download hello
echo "index $(apt-cache $A show hello | sed -n 's/^SHA256: //p' | head -1)"
echo "deb $(sha256sum hello_*.deb | cut -d' ' -f1)"
echo "release $(sed -n '/^SHA256:/,$p' /tmp/apt/lists/*_dists_bookworm_InRelease | awk '$3 == "main/binary-amd64/Packages.gz" {print $1; exit}')"
python3 - <<'PY'
import hashlib, urllib.request
with urllib.request.urlopen("https://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.gz", timeout=60) as r:
    d = r.read()
print("https", len(d), hashlib.sha256(d).hexdigest())
PY`;

    const id = await submitJob(m, {
      command: ["/bin/bash", "-c", script],
      egress: ["deb.debian.org"],
    });
    const job = await waitJob(m, id, 240_000);
    const out = (await m.cli(["logs", String(id)])).stdout;
    expect({ state: job.state, log: job.state === "succeeded" ? "" : out }).toEqual({
      state: "succeeded",
      log: "",
    });
    const field = (name: string) => new RegExp(`^${name} (.*)$`, "m").exec(out)?.[1] ?? "";
    expect(Number(out.split("\n")[0])).toBeGreaterThan(0);
    expect(field("deb")).toMatch(/^[0-9a-f]{64}$/);
    expect(field("deb")).toBe(field("index"));
    const [size, httpsSha] = field("https").split(" ");
    expect(Number(size)).toBeGreaterThan(5 * MiB);
    expect(httpsSha).toBe(field("release"));
  }, 300_000);
});

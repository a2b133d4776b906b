// The cost of TLS on loopback: a request on a fresh connection (handshake included) and on a kept-alive
// one, over plain HTTP, HTTPS with the master's certificate (serverTls) and HTTPS as an enrolled worker
// (client certificate plus the per-request proof, checked against a real store). The server runs in a
// child process so client and server do not share an event loop.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { certificateLedger, createJoinToken } from "../../src/store/enrollment.ts";
import { openStore } from "../../src/store/open.ts";
import { openAuthority, serverTls } from "../../src/tls/authority.ts";
import { authenticateWorker, enrollmentHandler } from "../../src/tls/enroll.ts";
import { clientTls, identityHeaders, joinMaster } from "../../src/tls/join.ts";
import { newJoinToken } from "../../src/tls/join-token.ts";

const FRESH = Number(process.env.BENCH_TLS_FRESH ?? 300);
const REUSED = Number(process.env.BENCH_TLS_REUSED ?? 3000);

if (process.argv[2] === "serve") {
  const dir = process.argv[3]!;
  const store = await openStore(`file:${join(dir, "kiln.db")}`);
  const authority = await openAuthority({ dir: join(dir, "tls"), names: ["127.0.0.1"] });
  const ledger = certificateLedger(store);
  const log = { info() {}, warn() {} };
  const enroll = enrollmentHandler({ authority, ledger, log });
  const { token, secretHash } = newJoinToken(authority.anchorFingerprint);
  await createJoinToken(store, { secretHash, ttlMs: 600_000 });
  const plain = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok") });
  const tls = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: serverTls(authority),
    async fetch(req) {
      const answered = await enroll(req);
      if (answered) return answered;
      if (new URL(req.url).pathname === "/w") await authenticateWorker(req, { authority, ledger, log });
      return new Response("ok");
    },
  });
  console.log(JSON.stringify({ plain: plain.port, tls: tls.port, token }));
  // Stops when the parent closes stdin (or dies).
  for await (const _ of Bun.stdin.stream());
  plain.stop(true);
  tls.stop(true);
  store.close();
  process.exit(0);
}

const dir = mkdtempSync(join(tmpdir(), "kiln-bench-tls-"));
const child = Bun.spawn(["bun", import.meta.path, "serve", dir], {
  stdin: "pipe",
  stdout: "pipe",
  stderr: "inherit",
});
try {
  const reader = child.stdout.getReader();
  let line = "";
  while (!line.includes("\n")) line += new TextDecoder().decode((await reader.read()).value);
  const ports = JSON.parse(line) as { plain: number; tls: number; token: string };
  const https = `https://127.0.0.1:${ports.tls}`;
  const id = await joinMaster({
    masterUrl: https,
    token: ports.token,
    worker: "xa-bench",
    dir: join(dir, "worker"),
  });

  type Case = { name: string; url: string; init: () => Promise<RequestInit> };
  const cases: Case[] = [
    { name: "plain HTTP", url: `http://127.0.0.1:${ports.plain}/r`, init: async () => ({}) },
    { name: "HTTPS (server certificate)", url: `${https}/r`, init: async () => ({ tls: { ca: id.caPem } }) },
    {
      name: "HTTPS with a client certificate, no proof",
      url: `${https}/r`,
      init: async () => ({ tls: clientTls(id) }),
    },
    {
      name: "HTTPS as an enrolled worker (client certificate + proof checked in the store)",
      url: `${https}/w`,
      init: async () => ({ tls: clientTls(id), headers: await identityHeaders(id, "GET", "/w") }),
    },
  ];
  const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) * p)]!;
  const run = async (c: Case, n: number, keepalive: boolean) => {
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const init = await c.init();
      const t0 = performance.now();
      const res = await fetch(c.url, { ...init, keepalive });
      await res.text();
      if (!res.ok) throw new Error(`${c.name}: ${res.status}`);
      times.push(performance.now() - t0);
    }
    return times;
  };
  console.log(
    `\n| request on loopback | new connection p50 / p99 ms (${FRESH}) | kept-alive p50 / p99 ms (${REUSED}) |`,
  );
  console.log("|---|---|---|");
  const rows: Record<string, number> = {};
  for (const c of cases) {
    await run(c, 20, false); // Warm-up: JIT, the first handshake.
    const fresh = await run(c, FRESH, false);
    const reused = await run(c, REUSED, true);
    rows[c.name] = pct(fresh, 0.5);
    console.log(
      `| ${c.name} | ${pct(fresh, 0.5).toFixed(2)} / ${pct(fresh, 0.99).toFixed(2)} | ${pct(reused, 0.5).toFixed(3)} / ${pct(reused, 0.99).toFixed(3)} |`,
    );
  }
  const [plain, tls, mtls, worker] = Object.values(rows) as [number, number, number, number];
  console.log(
    `\nnew connection, p50: TLS adds ${(tls - plain).toFixed(2)} ms over plain HTTP, a client certificate ${(mtls - tls).toFixed(2)} ms more, the proof checked in the store ${(worker - mtls).toFixed(2)} ms more`,
  );
} finally {
  child.stdin.end();
  await child.exited;
  rmSync(dir, { recursive: true, force: true });
}

import { afterEach, beforeEach, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { AppError } from "../lib/errors.ts";
import {
  certificateLedger,
  createJoinToken,
  findCertificate,
  listJoinTokens,
  revokeCertificate,
  revokeJoinToken,
  revokeWorkerCertificates,
} from "../store/enrollment.ts";
import { openStore, type Store } from "../store/open.ts";
import { type Authority, openAuthority, serverTls } from "./authority.ts";
import { authenticateWorker, enrollmentHandler, TLS_ROUTES } from "./enroll.ts";
import { checkCsr, signWorkerCertificate } from "./issue.ts";
import { clientTls, identityHeaders, joinMaster, loadIdentity, renewIfDue } from "./join.ts";
import { newJoinToken } from "./join-token.ts";
import { proofHeaders, type WorkerIdentity } from "./proof.ts";
import { generateKeyPair, importSigningKey, privateKeyPem, x509 } from "./x509.ts";

/*
 * Enrollment over real TLS on 127.0.0.1: a Bun.serve configured as the master's port is (serverTls), the
 * real enrollment handler, a real libSQL store, and workers that join with fetch and speak over fetch and
 * WebSocket with their certificates. `/whoami` and `/ws` stand for any worker route.
 */

const DAY = 86_400_000;
// Key generation, openssl runs and TLS handshakes share two cores with other test runs: 5 s is too tight.
setDefaultTimeout(30_000);

let dir: string;
let store: Store;
let authority: Authority;
let server: Server<{ worker: string }>;
let url: string;
let clock: number;
let logs: string[];
let issued: string[];
const servers: Server<unknown>[] = [];

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "kiln-enroll-"));
  store = await openStore(`file:${join(dir, "kiln.db")}`);
  authority = await openAuthority({ dir: join(dir, "master-tls"), names: ["127.0.0.1"] });
  clock = Date.now();
  logs = [];
  issued = [];
  const log = { info: (m: string) => logs.push(`info ${m}`), warn: (m: string) => logs.push(`warn ${m}`) };
  const ledger = certificateLedger(store);
  const enroll = enrollmentHandler({ authority, ledger, log, now: () => clock });
  server = Bun.serve<{ worker: string }>({
    hostname: "127.0.0.1",
    port: 0,
    tls: serverTls(authority),
    async fetch(req, srv) {
      const ip = srv.requestIP(req)?.address;
      const answered = await enroll(req, ip);
      if (answered) return answered;
      try {
        const w = await authenticateWorker(req, { authority, ledger, log, ip }, clock);
        if (new URL(req.url).pathname === "/ws" && srv.upgrade(req, { data: { worker: w.worker } }))
          return undefined;
        return Response.json(w);
      } catch (err) {
        const e = err as AppError;
        return Response.json({ error: { code: e.code, message: e.message } }, { status: e.status });
      }
    },
    websocket: {
      open(ws) {
        ws.send(`hello ${ws.data.worker}`);
      },
      message() {},
    },
  });
  url = `https://127.0.0.1:${server.port}`;
});

afterEach(() => {
  // Whatever a test did, the master's log never shows a join token's secret or a private key.
  const text = logs.join("\n");
  for (const token of issued) expect(text).not.toContain(token.split(".")[2]!);
  expect(text).not.toContain("PRIVATE KEY");
  server.stop(true);
  for (const s of servers.splice(0)) s.stop(true);
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

async function joinToken(ttlMs = DAY): Promise<string> {
  const { token, secretHash } = newJoinToken(authority.anchorFingerprint);
  await createJoinToken(store, { secretHash, ttlMs }, clock);
  issued.push(token);
  return token;
}

const workerDir = (name: string) => join(dir, "workers", name, "tls");

async function join1(worker: string, token?: string, masterUrl = url): Promise<WorkerIdentity> {
  return joinMaster({ masterUrl, token: token ?? (await joinToken()), worker, dir: workerDir(worker) });
}

const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => "resolved",
    (e) => (e instanceof AppError ? e.code : `thrown: ${(e as Error).message}`),
  );

/** What a worker route answers `id`: the status and the identity or error code. */
async function whoami(id: WorkerIdentity, headers?: Record<string, string>) {
  const res = await fetch(`${url}/whoami`, {
    tls: clientTls(id),
    headers: headers ?? (await identityHeaders(id, "GET", "/whoami", clock)),
  });
  const body = (await res.json()) as { worker?: string; error?: { code: string } };
  return { status: res.status, who: body.worker ?? body.error?.code };
}

/** The first message of a websocket to /ws, or "closed" when the master refuses it. */
async function wsHello(id: WorkerIdentity, headers?: Record<string, string>): Promise<string> {
  const h = headers ?? (await identityHeaders(id, "GET", "/ws", clock));
  const ws = new WebSocket(`${url.replace("https", "wss")}/ws`, {
    headers: h,
    tls: clientTls(id),
  } as unknown as string[]);
  return new Promise((resolve) => {
    ws.onmessage = (m) => {
      resolve(String(m.data));
      ws.close();
    };
    ws.onerror = () => resolve("closed");
    ws.onclose = () => resolve("closed");
  });
}

const mode = (p: string) => statSync(p).mode & 0o777;

test("an enrolled worker is accepted over mutual TLS as the name in its certificate, on fetch and on the websocket", async () => {
  const id = await join1("xa-w1");
  expect(mode(workerDir("xa-w1"))).toBe(0o700);
  expect(mode(join(workerDir("xa-w1"), "worker.pem"))).toBe(0o600);
  expect(loadIdentity(workerDir("xa-w1"))).toEqual(id);
  expect(await whoami(id)).toEqual({ status: 200, who: "xa-w1" });
  expect(await wsHello(id)).toBe("hello xa-w1");
  // OpenSSL agrees the issued certificate chains to the CA and is for TLS clients.
  writeFileSync(join(dir, "w.crt"), id.certPem);
  const v = Bun.spawnSync([
    "openssl",
    "verify",
    "-CAfile",
    join(dir, "master-tls", "ca.crt"),
    "-purpose",
    "sslclient",
    join(dir, "w.crt"),
  ]);
  expect(v.stdout.toString()).toContain(": OK");
  const text = Bun.spawnSync([
    "openssl",
    "x509",
    "-in",
    join(dir, "w.crt"),
    "-noout",
    "-text",
  ]).stdout.toString();
  expect(text).toContain("TLS Web Client Authentication");
  expect(text).toContain("URI:urn:kiln:worker:xa-w1");
  expect(text).toContain("CA:FALSE");
  expect(logs.join("\n")).toMatch(
    /info enrolled worker xa-w1 from 127\.0\.0\.1: certificate [0-9a-f]+ until/,
  );
});

test("a worker with no certificate is refused, and the master logs who and why", async () => {
  const res = await fetch(`${url}/whoami`, { tls: { ca: authority.caPem } });
  expect(res.status).toBe(401);
  expect(((await res.json()) as { error: { code: string } }).error.code).toBe("WORKER_CERT_MISSING");
  expect(logs.join("\n")).toContain(
    "warn refused a worker from 127.0.0.1 on /whoami: WORKER_CERT_MISSING: no worker certificate",
  );
});

test("a revoked worker is refused on its next request and its next websocket, and cannot renew", async () => {
  const id = await join1("xa-w2");
  expect((await whoami(id)).status).toBe(200);
  expect(await revokeWorkerCertificates(store, "xa-w2", "kiln workers rm", clock)).toBe(1);
  expect(await whoami(id)).toEqual({ status: 401, who: "CERTIFICATE_REVOKED" });
  expect(await wsHello(id)).toBe("closed");
  clock += 25 * DAY;
  expect(await codeOf(renewIfDue({ masterUrl: url, dir: workerDir("xa-w2"), now: clock }))).toBe(
    "CERTIFICATE_REVOKED",
  );
});

test("revoking one certificate by serial refuses that one only, and a revoked join token enrolls nobody", async () => {
  const a = await join1("xa-w16");
  const b = await join1("xa-w17");
  const serial = new x509.X509Certificate(a.certPem).serialNumber;
  expect((await revokeCertificate(store, serial, "key leaked", clock))?.worker).toBe("xa-w16");
  expect(await revokeCertificate(store, serial, "again", clock)).toBeNull();
  expect(await whoami(a)).toEqual({ status: 401, who: "CERTIFICATE_REVOKED" });
  expect(await whoami(b)).toEqual({ status: 200, who: "xa-w17" });
  const token = await joinToken();
  const [row] = (await listJoinTokens(store.db)).filter((r) => r.usedAt === null);
  expect((await revokeJoinToken(store, row!.id, clock))?.id).toBe(row!.id);
  expect(await codeOf(join1("xa-w18", token))).toBe("JOIN_TOKEN_REVOKED");
});

test("an unverified answer to the CA request cannot make the worker read without end", async () => {
  const token = await joinToken();
  const huge = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: serverTls(authority),
    fetch: () =>
      new Response(
        new ReadableStream({
          pull(c) {
            c.enqueue(new Uint8Array(64 * 1024).fill(65));
          },
        }),
      ),
  });
  servers.push(huge as Server<unknown>);
  const failed = await join1("xa-w19", token, `https://127.0.0.1:${huge.port}`).then(
    () => "joined",
    (e: AppError) => `${e.code}: ${e.message}`,
  );
  expect(failed).toContain("MASTER_UNREACHABLE");
  expect(failed).toContain("larger than 65536 bytes");
});

test("a certificate from another CA is refused, even with a valid proof of its key", async () => {
  const other = await openAuthority({ dir: join(dir, "other-tls"), names: ["127.0.0.1"] });
  const keys = await generateKeyPair();
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: "CN=xa-w3",
    keys,
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  const { csr: parsed } = await checkCsr(csr.toString("pem"));
  const foreign = await signWorkerCertificate(other, parsed, "xa-w3", clock);
  const id = { certPem: foreign.pem, keyPem: await privateKeyPem(keys.privateKey), caPem: authority.caPem };
  expect(await whoami(id)).toEqual({ status: 401, who: "CERTIFICATE_UNTRUSTED" });
  expect(await wsHello(id)).toBe("closed");
});

test("someone holding a worker's certificate but not its key is refused", async () => {
  const id = await join1("xa-w4");
  const thief = await generateKeyPair();
  const forged = await proofHeaders({ certPem: id.certPem, key: thief.privateKey }, "GET", "/whoami", clock);
  expect(await whoami(id, forged)).toEqual({ status: 401, who: "WORKER_PROOF_INVALID" });
  // A proof made for another path does not open this one either.
  const elsewhere = await identityHeaders(id, "GET", "/other", clock);
  expect(await whoami(id, elsewhere)).toEqual({ status: 401, who: "WORKER_PROOF_INVALID" });
  const stale = await identityHeaders(id, "GET", "/whoami", clock - 10 * 60_000);
  expect(await whoami(id, stale)).toEqual({ status: 401, who: "WORKER_PROOF_STALE" });
});

test("an expired join token is refused and the worker gets no certificate", async () => {
  const token = await joinToken(60_000);
  clock += 61_000;
  expect(await codeOf(join1("xa-w5", token))).toBe("JOIN_TOKEN_EXPIRED");
  expect(existsSync(join(workerDir("xa-w5"), "worker.pem"))).toBe(false);
  expect(logs.join("\n")).toMatch(
    /warn refused \/api\/v1\/tls\/enroll for worker xa-w5 from 127\.0\.0\.1: JOIN_TOKEN_EXPIRED/,
  );
});

test("a join token enrolls one worker once, also when two race for it", async () => {
  const token = await joinToken();
  await join1("xa-w6", token);
  const again = join1("xa-w7", token);
  await again.then(
    () => expect.unreachable(),
    (e: AppError) => expect(e.message).toContain("already used by worker xa-w6"),
  );
  const raced = await joinToken();
  const results = await Promise.all(["xa-w8", "xa-w9", "xa-w10"].map((w) => codeOf(join1(w, raced))));
  expect(results.sort()).toEqual(["JOIN_TOKEN_USED", "JOIN_TOKEN_USED", "resolved"]);
  const rows = await listJoinTokens(store.db);
  expect(rows.map((r) => r.usedAt !== null)).toEqual([true, true]);
});

test("a name already enrolled cannot be taken by a second join until it is revoked", async () => {
  await join1("xa-w11");
  expect(await codeOf(join1("xa-w11", undefined))).toBe("WORKER_ALREADY_ENROLLED");
  await revokeWorkerCertificates(store, "xa-w11", "test", clock);
  const id = await join1("xa-w11");
  expect((await whoami(id)).who).toBe("xa-w11");
});

test("a bad certificate request or a hostile name is refused before the join token is spent", async () => {
  const token = await joinToken();
  const post = (body: unknown) =>
    fetch(`${url}${TLS_ROUTES.enroll}`, {
      method: "POST",
      body: JSON.stringify(body),
      tls: { ca: authority.caPem },
    }).then(async (r) => [r.status, ((await r.json()) as { error: { code: string } }).error.code]);
  const secret = token.split(".")[2];
  const keys = await generateKeyPair();
  const csrFor = async (cn: string) =>
    (
      await x509.Pkcs10CertificateRequestGenerator.create({
        name: `CN=${cn}`,
        keys,
        signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
      })
    ).toString("pem");
  expect(await post({ secret, csr: await csrFor("../../etc") })).toEqual([400, "CSR_INVALID"]);
  expect(await post({ secret, csr: await csrFor("Upper") })).toEqual([400, "CSR_INVALID"]);
  expect(
    await post({
      secret,
      csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
    }),
  ).toEqual([400, "CSR_INVALID"]);
  expect(await post({ secret, csr: "x".repeat(64 * 1024) })).toEqual([413, "BODY_TOO_LARGE"]);
  expect(await post({ secret: 5, csr: await csrFor("xa-w12") })).toEqual([400, "INVALID_REQUEST"]);
  expect(await post({ secret: "nope", csr: await csrFor("xa-w12") })).toEqual([401, "JOIN_TOKEN_UNKNOWN"]);
  // None of that spent the token.
  await join1("xa-w12", token);
});

test("a man in the middle with another CA is refused at enrollment before the secret is sent", async () => {
  const token = await joinToken();
  const mitmCa = await openAuthority({ dir: join(dir, "mitm-tls"), names: ["127.0.0.1"] });
  const seen: string[] = [];
  // One interceptor shows its own CA; the cleverer one shows the real (public) CA but cannot prove it.
  for (const anchor of [mitmCa.anchorPem, authority.anchorPem]) {
    const mitm = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      tls: serverTls(mitmCa),
      async fetch(req) {
        seen.push(`${req.method} ${new URL(req.url).pathname} ${await req.text()}`);
        return new Response(anchor);
      },
    });
    servers.push(mitm as Server<unknown>);
    const code = await codeOf(join1("xa-w13", token, `https://127.0.0.1:${mitm.port}`));
    expect(code).toBe(anchor === authority.anchorPem ? "MASTER_UNREACHABLE" : "TLS_FINGERPRINT_MISMATCH");
  }
  expect(seen).toEqual([`GET ${TLS_ROUTES.ca} `, `GET ${TLS_ROUTES.ca} `]);
  // The token was never exposed, so it still enrolls at the real master.
  expect((await whoami(await join1("xa-w13", token))).who).toBe("xa-w13");
});

test("a worker renews its certificate over its mutual-TLS identity once a third of its life is left", async () => {
  const id = await join1("xa-w14");
  const first = new x509.X509Certificate(id.certPem);
  expect(await renewIfDue({ masterUrl: url, dir: workerDir("xa-w14"), now: clock + 15 * DAY })).toBe(false);
  clock += 21 * DAY;
  expect(await renewIfDue({ masterUrl: url, dir: workerDir("xa-w14"), now: clock })).toBe(true);
  const renewed = loadIdentity(workerDir("xa-w14"))!;
  const second = new x509.X509Certificate(renewed.certPem);
  expect(second.serialNumber).not.toBe(first.serialNumber);
  expect(second.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
  expect(renewed.keyPem).not.toBe(id.keyPem);
  expect((await findCertificate(store.db, second.serialNumber))?.renewedFrom).toBe(first.serialNumber);
  expect(await whoami(renewed)).toEqual({ status: 200, who: "xa-w14" });
  expect(mode(join(workerDir("xa-w14"), "worker.pem"))).toBe(0o600);
  // Past the first certificate's end, only the renewed one works.
  clock = first.notAfter.getTime() + 1000;
  expect(await whoami(id)).toEqual({ status: 401, who: "CERTIFICATE_EXPIRED" });
  expect((await whoami(renewed)).who).toBe("xa-w14");
});

test("a port that requires client certificates refuses a client without one, or with another CA's, in the handshake", async () => {
  const id = await join1("xa-w15");
  const other = await openAuthority({ dir: join(dir, "other-tls"), names: ["127.0.0.1"] });
  const strict = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    tls: { ...serverTls(authority), rejectUnauthorized: true },
    fetch: () => new Response("in"),
  });
  servers.push(strict as Server<unknown>);
  const get = (tls: Record<string, string>) =>
    fetch(`https://127.0.0.1:${strict.port}/`, { tls, keepalive: false }).then(
      (r) => r.status,
      () => "refused",
    );
  expect(await get({ ca: authority.caPem })).toBe("refused");
  expect(await get({ ca: authority.caPem, cert: other.serverCertPem, key: other.serverKeyPem })).toBe(
    "refused",
  );
  expect(await get(clientTls(id))).toBe(200);
  const key = await importSigningKey(id.keyPem, "k");
  expect(key.type).toBe("private");
});

test("revoking a used join token revokes the certificate it gave and every renewal of it", async () => {
  const token = await joinToken();
  await join1("xa-w20", token);
  clock += 25 * DAY;
  expect(await renewIfDue({ masterUrl: url, dir: workerDir("xa-w20"), now: clock })).toBe(true);
  const renewed = loadIdentity(workerDir("xa-w20"))!;
  const [row] = (await listJoinTokens(store.db)).filter((r) => r.usedBy === "xa-w20");
  const revoked = await revokeJoinToken(store, row!.id, clock);
  expect(revoked?.certificates.length).toBe(2);
  expect(revoked?.certificates).toContain(new x509.X509Certificate(renewed.certPem).serialNumber);
  expect(await whoami(renewed)).toEqual({ status: 401, who: "CERTIFICATE_REVOKED" });
  expect(await revokeJoinToken(store, row!.id, clock)).toBeNull();
});

test("a refusal a worker repeats is logged at warn once, its repeats at debug", async () => {
  const id = await join1("xa-w21");
  await revokeWorkerCertificates(store, "xa-w21", "test", clock);
  const said: string[] = [];
  const log = {
    info: () => {},
    warn: (m: string) => said.push(`warn ${m}`),
    debug: (m: string) => said.push(`debug ${m}`),
  };
  const seen = new Set<string>();
  const once = (key: string) => !seen.has(key) && Boolean(seen.add(key));
  const ledger = certificateLedger(store);
  for (let i = 0; i < 3; i++) {
    const req = new Request(`${url}/ws`, { headers: await identityHeaders(id, "GET", "/ws", clock) });
    expect(
      await codeOf(authenticateWorker(req, { authority, ledger, log, ip: "10.0.0.9", once }, clock)),
    ).toBe("CERTIFICATE_REVOKED");
  }
  expect(said.map((l) => l.split(" ")[0])).toEqual(["warn", "debug", "debug"]);
  expect(said[0]).toContain("refused a worker from 10.0.0.9 on /ws: CERTIFICATE_REVOKED: certificate");
});

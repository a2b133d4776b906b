import { afterEach, beforeEach, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AppError } from "../lib/errors.ts";
import { openAuthority, renewalDue, sanOf, serverNames } from "./authority.ts";
import { newJoinToken, parseJoinToken } from "./join-token.ts";
import { x509 } from "./x509.ts";

// Key generation, openssl runs and TLS handshakes share two cores with other test runs: 5 s is too tight.
setDefaultTimeout(30_000);

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "kiln-tls-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const mode = (p: string) => statSync(p).mode & 0o777;
const openssl = (...args: string[]) => {
  const p = Bun.spawnSync(["openssl", ...args], { stderr: "pipe", stdout: "pipe" });
  return { code: p.exitCode, out: `${p.stdout.toString()}${p.stderr.toString()}` };
};
const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => "resolved",
    (e) => (e as AppError).code,
  );

test("the first start creates the CA and a server certificate with private keys 0600 in a 0700 directory", async () => {
  const tlsDir = join(dir, "tls");
  const a = await openAuthority({ dir: tlsDir, names: ["kiln.example", "127.0.0.1", "::1"] });
  expect(mode(tlsDir)).toBe(0o700);
  expect(mode(join(tlsDir, "ca.key"))).toBe(0o600);
  expect(mode(join(tlsDir, "server.key"))).toBe(0o600);
  // OpenSSL, not our own code, judges the chain and the server certificate's purpose.
  const v = openssl(
    "verify",
    "-CAfile",
    join(tlsDir, "ca.crt"),
    "-purpose",
    "sslserver",
    join(tlsDir, "server.crt"),
  );
  expect(v.out).toContain(": OK");
  const text = openssl("x509", "-in", join(tlsDir, "server.crt"), "-noout", "-text").out;
  expect(text).toContain("TLS Web Server Authentication");
  expect(text).toContain("DNS:kiln.example, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1");
  expect(text).toMatch(/Public Key Algorithm: id-ecPublicKey[\s\S]*NIST CURVE: P-256/);
  const fpr = openssl("x509", "-in", join(tlsDir, "ca.crt"), "-noout", "-fingerprint", "-sha256").out;
  expect(fpr.replaceAll(":", "").toLowerCase()).toContain(a.anchorFingerprint);
  expect(openssl("x509", "-in", join(tlsDir, "ca.crt"), "-noout", "-text").out).toContain(
    "CA:TRUE, pathlen:0",
  );
});

test("a second start keeps the CA and re-issues the server certificate only when its names change", async () => {
  const tlsDir = join(dir, "tls");
  const first = await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  const again = await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  expect(again.anchorFingerprint).toBe(first.anchorFingerprint);
  expect(again.serverCertPem).toBe(first.serverCertPem);
  const renamed = await openAuthority({ dir: tlsDir, names: ["127.0.0.1", "build.example"] });
  expect(renamed.anchorFingerprint).toBe(first.anchorFingerprint);
  expect(sanOf(new x509.X509Certificate(renamed.serverCertPem))).toEqual(["127.0.0.1", "build.example"]);
  // A year on, the server certificate is within its last third and is replaced; the CA is not.
  const later = await openAuthority({
    dir: tlsDir,
    names: ["127.0.0.1", "build.example"],
    now: Date.now() + 300 * 86_400_000,
  });
  expect(later.serverCertPem).not.toBe(renamed.serverCertPem);
  expect(later.anchorFingerprint).toBe(first.anchorFingerprint);
});

test("a start cut short after writing a key, before its certificate, is completed at the next start", async () => {
  const tlsDir = join(dir, "tls");
  const first = await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  rmSync(join(tlsDir, "server.crt"));
  const again = await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  expect(again.anchorFingerprint).toBe(first.anchorFingerprint);
  expect(openssl("verify", "-CAfile", join(tlsDir, "ca.crt"), join(tlsDir, "server.crt")).out).toContain(
    ": OK",
  );
  rmSync(join(tlsDir, "ca.crt"));
  const fresh = await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  expect(fresh.anchorFingerprint).not.toBe(first.anchorFingerprint);
  // The server certificate of the old CA is replaced by one the new CA signed.
  expect(openssl("verify", "-CAfile", join(tlsDir, "ca.crt"), join(tlsDir, "server.crt")).out).toContain(
    ": OK",
  );
});

test("a CA key that does not match its certificate is refused, not silently replaced", async () => {
  const tlsDir = join(dir, "tls");
  await openAuthority({ dir: tlsDir, names: ["127.0.0.1"] });
  writeFileSync(join(tlsDir, "ca.key"), readFileSync(join(tlsDir, "server.key")));
  expect(await codeOf(openAuthority({ dir: tlsDir, names: ["127.0.0.1"] }))).toBe("TLS_KEY_MISMATCH");
});

test("names that are neither addresses nor DNS names are refused", () => {
  expect(() => serverNames(["ok.example", "bad name"])).toThrow(/bad name/);
  expect(() => serverNames(["../etc"])).toThrow(/neither an IP address nor a DNS name/);
  expect(serverNames([])).toContain("127.0.0.1");
});

/** An operator's own PKI made with the openssl CLI: a root, a server certificate it signed, and a stranger's key. */
function operatorPki() {
  const f = (n: string) => join(dir, n);
  const run = (...a: string[]) => expect(openssl(...a).code).toBe(0);
  run(
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    f("root.key"),
    "-out",
    f("root.pem"),
    "-days",
    "30",
    "-subj",
    "/CN=Operator Root",
  );
  run(
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-keyout",
    f("srv.key"),
    "-out",
    f("srv.csr"),
    "-subj",
    "/CN=kiln.example",
  );
  writeFileSync(f("ext"), "subjectAltName=DNS:kiln.example\nextendedKeyUsage=serverAuth\n");
  run(
    "x509",
    "-req",
    "-in",
    f("srv.csr"),
    "-CA",
    f("root.pem"),
    "-CAkey",
    f("root.key"),
    "-CAcreateserial",
    "-out",
    f("srv.pem"),
    "-days",
    "30",
    "-extfile",
    f("ext"),
  );
  run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", f("other.key"));
  writeFileSync(f("chain.pem"), readFileSync(f("srv.pem"), "utf8") + readFileSync(f("root.pem"), "utf8"));
  return f;
}

test("an operator's certificate and key are used as given, and workers pin the root of its chain", async () => {
  const f = operatorPki();
  const a = await openAuthority({
    dir: join(dir, "tls"),
    names: [],
    cert: f("chain.pem"),
    key: f("srv.key"),
  });
  expect(a.serverCertPem).toBe(readFileSync(f("chain.pem"), "utf8"));
  const rootFpr = openssl("x509", "-in", f("root.pem"), "-noout", "-fingerprint", "-sha256").out;
  expect(rootFpr.replaceAll(":", "").toLowerCase()).toContain(a.anchorFingerprint);
  // Workers' client certificates still come from Kiln's own CA.
  expect(a.ca.subject).toStartWith("CN=Kiln CA");
});

test("an operator's pair that does not fit is refused with what is wrong", async () => {
  const f = operatorPki();
  const open = (cert?: string, key?: string) =>
    codeOf(openAuthority({ dir: join(dir, "tls"), names: [], cert, key }));
  expect(await open(f("chain.pem"), f("other.key"))).toBe("TLS_KEY_MISMATCH");
  expect(await open(f("srv.pem"), f("srv.key"))).toBe("TLS_CERT_INVALID"); // no chain up to a root to pin
  expect(await open(f("chain.pem"), undefined)).toBe("TLS_CONFIG_INVALID");
  expect(await open(f("srv.key"), f("srv.key"))).toBe("TLS_CERT_INVALID");
  expect(await open(f("chain.pem"), f("srv.csr"))).toBe("TLS_KEY_INVALID");
  expect(await open(f("missing.pem"), f("srv.key"))).toBe("TLS_CONFIG_INVALID");
  await openAuthority({
    dir: join(dir, "tls"),
    names: [],
    cert: f("chain.pem"),
    key: f("srv.key"),
    now: Date.now() + 40 * 86_400_000,
  }).then(
    () => expect.unreachable(),
    (e: AppError) => expect(e.message).toMatch(/tls_cert .* is valid from .* not now/),
  );
});

test("a join token carries the fingerprint and a secret, and a damaged one is refused saying which part", () => {
  const fpr = "ab".repeat(32);
  const { token, secretHash } = newJoinToken(fpr);
  expect(token).toMatch(/^kiln1\.[0-9a-f]{64}\.[A-Za-z0-9_-]{43}$/);
  const parsed = parseJoinToken(`  ${token}\n`);
  expect(parsed.fingerprint).toBe(fpr);
  expect(secretHash).not.toContain(parsed.secret);
  const fail = (t: string) => {
    try {
      parseJoinToken(t);
      return "parsed";
    } catch (e) {
      return (e as Error).message.split(";")[0];
    }
  };
  expect(fail("kiln_abcdef")).toBe("the join token is an API token (kiln_...), not a join token");
  expect(fail(token.replace("kiln1", "kiln2"))).toBe('the join token does not start with "kiln1."');
  expect(fail(`${token}.x`)).toBe("the join token has 4 dot-separated parts instead of 3");
  expect(fail(token.replace(fpr, fpr.slice(2)))).toContain("no SHA-256 fingerprint");
  expect(fail(token.slice(0, -1))).toContain("damaged secret");
  // The secret never appears in an error message.
  expect(fail(`${token.slice(0, -1)}!`)).not.toContain(parsed.secret.slice(0, 20));
});

test("a certificate is due for renewal once less than a third of its life is left", async () => {
  const keys = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, [
    "sign",
    "verify",
  ]);
  const start = Date.UTC(2026, 0, 1);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: "CN=t",
    keys: keys as CryptoKeyPair,
    notBefore: new Date(start),
    notAfter: new Date(start + 30 * 86_400_000),
    signingAlgorithm: { name: "ECDSA", hash: "SHA-256" },
  });
  expect(renewalDue(cert, start + 19 * 86_400_000)).toBe(false);
  expect(renewalDue(cert, start + 21 * 86_400_000)).toBe(true);
});

import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { rootCertificates } from "node:tls";
import { adminTokenPath, dataDir } from "../config/paths.ts";
import { isUnverifiedCertificate } from "../lib/certificate-error.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { fetchPinnedCa } from "../tls/join.ts";

export interface ClientOptions {
  url?: string;
  token?: string;
  data?: string;
  /** A PEM file with the CA to verify an https:// master against (--ca). */
  ca?: string;
  /** The SHA-256 of the master's CA certificate (--ca-fingerprint): the CA is fetched and checked first. */
  caFingerprint?: string;
  /** Do not verify the master's certificate (--insecure); a warning says so on stderr. */
  insecure?: boolean;
}

/** An API client for the CLI: resolves URL and token, and turns failures into one-line errors. */
export interface Client {
  url: string;
  request<T>(method: string, path: string, body?: unknown): Promise<T>;
  raw(path: string, init?: RequestInit): Promise<Response>;
}

/** The token: --token, else KILN_TOKEN, else DATA/admin.token when this host's master left one readable. */
export function resolveToken(o: ClientOptions): string | undefined {
  if (o.token) return o.token;
  if (process.env.KILN_TOKEN) return process.env.KILN_TOKEN;
  const file = adminTokenPath(localData(o));
  try {
    if (existsSync(file)) return readFileSync(file, "utf8").trim();
  } catch {
    // Not readable by this user: fall through to "no token".
  }
  return undefined;
}

const localData = (o: ClientOptions) =>
  o.data || dataDir({ node: { data: process.env.KILN_NODE_DATA ?? "" } });

type Tls = { ca?: string | string[]; rejectUnauthorized?: boolean };

/*
 * How an https:// master is verified, in this order: --insecure (not at all, said on stderr); --ca FILE;
 * --ca-fingerprint SHA256 (the CA is fetched unverified and used only if its SHA-256 matches, as a
 * joining worker does); KILN_CA, a file or a fingerprint; else the public roots plus, on the master's own
 * host, the CA in its data dir (DATA/tls/ca.crt, readable like admin.token). Nothing is trusted on first
 * use: a master none of these vouch for is refused with what to pass.
 */
function trustOf(o: ClientOptions, url: string): () => Promise<Tls | undefined> {
  if (!url.startsWith("https://")) return async () => undefined;
  const given = [o.insecure && "--insecure", o.ca && "--ca", o.caFingerprint && "--ca-fingerprint"].filter(
    Boolean,
  );
  if (given.length > 1) throw new AppError("USAGE", `give one of ${given.join(", ")}, not several`);
  if (o.insecure) {
    process.stderr.write(
      `kiln: warning: --insecure: the certificate of ${url} is not verified; whoever sits between here and there can read the token and every answer\n`,
    );
    return async () => ({ rejectUnauthorized: false });
  }
  // A flag beats the environment; KILN_CA is a fingerprint when it looks like one, else a file.
  const env = o.ca || o.caFingerprint ? undefined : process.env.KILN_CA?.trim() || undefined;
  const fingerprint = o.caFingerprint ?? (env && isFingerprint(env) ? env : undefined);
  if (fingerprint !== undefined) {
    const what = o.caFingerprint ? "--ca-fingerprint" : "KILN_CA";
    const fp = fingerprint.replaceAll(":", "").toLowerCase();
    if (!isFingerprint(fp))
      throw new AppError(
        "USAGE",
        `${what} ${fingerprint}: not a SHA-256 fingerprint (64 hex digits, colons allowed)`,
      );
    let pinned: Promise<Tls> | undefined;
    return () => {
      pinned ??= fetchPinnedCa(url, fp, what).then((ca) => ({ ca }));
      return pinned;
    };
  }
  const file = o.ca ?? env;
  if (file) {
    const flag = o.ca ? "--ca" : "KILN_CA";
    let ca: string;
    try {
      ca = readFileSync(file, "utf8");
    } catch (err) {
      throw new AppError("USAGE", `${flag} ${file}: ${coerceError(err).message}`);
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----"))
      throw new AppError("USAGE", `${flag} ${file}: no PEM certificate in it`);
    return async () => ({ ca });
  }
  const local = join(localData(o), "tls", "ca.crt");
  try {
    const ca = readFileSync(local, "utf8");
    return async () => ({ ca: [...rootCertificates, ca] });
  } catch {
    // Not this master's host, or not readable by this user: the public roots alone.
    return async () => undefined;
  }
}

const isFingerprint = (s: string) => /^[0-9a-f]{64}$/i.test(s.replaceAll(":", ""));

/** A one-line error for a failed connection: an untrusted certificate says what to pass, anything else where to look. */
function unreachable(url: string, err: unknown): AppError {
  if (err instanceof AppError) return err;
  const e = coerceError(err);
  const code = String((e as { code?: unknown }).code ?? "");
  if (isUnverifiedCertificate(err))
    return new AppError(
      "TLS_UNVERIFIED",
      code.includes("ALTNAME")
        ? `the certificate of ${url} does not name ${new URL(url).hostname}: use a name or address the master's certificate carries (master.tls_names), or add this one there`
        : `the master at ${url} presented a certificate this client does not trust (${e.message}): pass --ca FILE (the master's DATA/tls/ca.crt) or --ca-fingerprint SHA256 (the master logs it at start), or set KILN_CA; --insecure skips the check, unsafely`,
      { cause: err },
    );
  const hint = url.startsWith("http://") ? "; if the master serves TLS, use an https:// URL" : "";
  return new AppError(
    "MASTER_UNREACHABLE",
    `cannot reach the master at ${url} (${e.message}): is \`kiln master\` running? set --url or KILN_URL${hint}`,
    { cause: err },
  );
}

export function createClient(o: ClientOptions): Client {
  const url = (o.url || process.env.KILN_URL || "http://127.0.0.1:7070").replace(/\/$/, "");
  if (!/^https?:\/\/[^/\s]+$/.test(url)) {
    throw new AppError(
      "BAD_URL",
      `--url ${url} is not a master URL: use http://HOST:PORT, or https://HOST:PORT for a master that serves TLS`,
    );
  }
  const token = resolveToken(o);
  const trust = trustOf(o, url);
  const raw = async (path: string, init: RequestInit = {}) => {
    const headers = new Headers(init.headers);
    if (token) headers.set("authorization", `Bearer ${token}`);
    try {
      // The trust is settled before the token is sent: with --ca-fingerprint that is a fetch of the CA.
      return await fetch(`${url}${path}`, { ...init, headers, tls: await trust() });
    } catch (err) {
      throw unreachable(url, err);
    }
  };
  return {
    url,
    raw,
    async request<T>(method: string, path: string, body?: unknown): Promise<T> {
      const res = await raw(path, {
        method,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await res.text();
      let parsed: unknown;
      try {
        parsed = text ? JSON.parse(text) : null;
      } catch {
        parsed = null;
      }
      if (!res.ok) {
        const e = (parsed as { error?: { code: string; message: string } } | null)?.error;
        if (res.status === 401 && !token) {
          throw new AppError(
            "UNAUTHENTICATED",
            "no token: pass --token, set KILN_TOKEN, or run on the master's host as a user who can read DATA/admin.token",
          );
        }
        throw new AppError(
          e?.code ?? `HTTP_${res.status}`,
          e?.message ?? `the master answered ${res.status} ${res.statusText}`,
          { status: res.status, remote: true },
        );
      }
      return parsed as T;
    },
  };
}

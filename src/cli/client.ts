import { existsSync, readFileSync } from "node:fs";
import { adminTokenPath, dataDir } from "../config/paths.ts";
import { AppError } from "../lib/errors.ts";

export interface ClientOptions {
  url?: string;
  token?: string;
  data?: string;
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
  const file = adminTokenPath(o.data || dataDir({ node: { data: process.env.KILN_NODE_DATA ?? "" } }));
  try {
    if (existsSync(file)) return readFileSync(file, "utf8").trim();
  } catch {
    // Not readable by this user: fall through to "no token".
  }
  return undefined;
}

export function createClient(o: ClientOptions): Client {
  const url = (o.url || process.env.KILN_URL || "http://127.0.0.1:7070").replace(/\/$/, "");
  if (!/^https?:\/\/[^/\s]+$/.test(url)) {
    throw new AppError("BAD_URL", `--url ${url} is not a master URL: use http://HOST:PORT`);
  }
  const token = resolveToken(o);
  const raw = async (path: string, init: RequestInit = {}) => {
    const headers = new Headers(init.headers);
    if (token) headers.set("authorization", `Bearer ${token}`);
    try {
      return await fetch(`${url}${path}`, { ...init, headers });
    } catch (err) {
      throw new AppError(
        "MASTER_UNREACHABLE",
        `cannot reach the master at ${url} (${(err as Error).message}): is \`kiln master\` running? set --url or KILN_URL`,
      );
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

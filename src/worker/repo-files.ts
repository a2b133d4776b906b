import { AppError, coerceError } from "../lib/errors.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";

/**
 * Fetches a file of a package repository from the master for a running attempt (the job's API proxy, for
 * `--use-repo`), with the attempt's own credential: the master serves only the repositories the job
 * named. `path` is percent-encoded already, part by part. The answer is the master's as it came, body
 * unread, for the proxy to stream; no redirect is followed and nothing is decompressed, so the bytes and
 * their length are the master's. Rejects with MASTER_UNREACHABLE when the master cannot be reached.
 */
export function repoFileFetcher(master: string, auth: MasterAuth) {
  const base = master.replace(/\/$/, "");
  return async (
    credential: string,
    name: string,
    path: string,
    init: { method: "GET" | "HEAD"; headers: Record<string, string>; signal: AbortSignal },
  ): Promise<Response> => {
    const url = `${base}/repos/${encodeURIComponent(name)}/${path}`;
    try {
      // The worker's own connection (its certificate on a TLS master), the job's own credential.
      const headers = {
        ...(await auth.headers(init.method, url)),
        ...init.headers,
        "accept-encoding": "identity",
        authorization: `Bearer ${credential}`,
      };
      return await fetch(url, {
        method: init.method,
        headers,
        tls: auth.tls(),
        signal: init.signal,
        redirect: "manual",
        decompress: false,
      });
    } catch (err) {
      throw new AppError("MASTER_UNREACHABLE", `cannot reach the master: ${coerceError(err).message}`, {
        status: 503,
        cause: err,
      });
    }
  };
}

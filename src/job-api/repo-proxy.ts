import { isName } from "../lib/names.ts";
import type { Outgoing } from "./outgoing.ts";

/*
 * The package repositories a job uses (`kiln submit --use-repo`), through its API proxy: a GET or HEAD of
 * `/repos/NAME/PATH` is forwarded to the master's `/repos/NAME/PATH` with the job's credential, and the
 * answer streamed back as it comes, so apt and dnf inside the sandbox install from the farm's own
 * repositories. Only the repositories the job named are reached (the master checks the same list against
 * the credential); a path is taken apart from the request as sent, before anything resolves "..", and every
 * part must be a plain name.
 */

/** Parts of a path under a repository, at most: a Debian pool path or a by-hash index is a handful. */
const MAX_PARTS = 32;

/**
 * The path of a request for the repositories, as sent (still percent-encoded), or null when it is not one:
 * origin form (`GET /repos/NAME/...`, what `$KILN_API/repos/...` sends), or an absolute URL naming a
 * loopback address (what apt or dnf send when `http_proxy` is set, as it is for a job with egress hosts:
 * the proxy is the only thing on the sandbox's loopback, and loopback is never an egress target).
 */
export function repoRequestPath(target: string): string | null {
  const abs = /^http:\/\/(?:127\.0\.0\.1|localhost|\[::1\])(?::\d{1,5})?(\/.*)?$/i.exec(target);
  const path = abs ? (abs[1] ?? "/") : target;
  return path === "/repos" || path.startsWith("/repos/") ? path : null;
}

/** A request for a repository's file, taken apart: the repository, and the path to ask the master for. */
export type RepoTarget =
  | { refused: null; name: string; path: string }
  /** `not-used`: answered 404 REPO_NOT_USED; `bad-path`: 400 INVALID_PATH. */
  | { refused: "not-used" | "bad-path"; message: string };

/**
 * Takes `/repos/NAME/PATH` apart for a job that uses `useRepos`. The name must be one of them (404
 * otherwise, whatever it is); each part of PATH is decoded on its own and must be a plain name: not empty,
 * "." or "..", no "/" or "\" once decoded, no control character (400). The path given back is encoded
 * again part by part, so the master sees exactly the parts checked here.
 */
export function repoTarget(rawPath: string, useRepos: readonly string[]): RepoTarget {
  const path = rawPath.replace(/[?#].*$/s, "");
  const [name = "", ...rest] = path.slice("/repos/".length).split("/");
  if (!isName(name) || !useRepos.includes(name)) {
    const shown = JSON.stringify(name.slice(0, 100));
    return {
      refused: "not-used",
      message: `this job does not use repository ${shown}: submit it with --use-repo NAME (or add NAME to its recipe's use_repos) to install from it`,
    };
  }
  // "/repos/NAME" and "/repos/NAME/" are the repository's root.
  const parts = rest.length === 1 && rest[0] === "" ? [] : rest;
  const bad = (why: string): RepoTarget => ({
    refused: "bad-path",
    message: `${JSON.stringify(path.slice(0, 300))} is not a path in a repository: ${why}`,
  });
  if (parts.length > MAX_PARTS) return bad(`more than ${MAX_PARTS} parts`);
  const decoded: string[] = [];
  for (const p of parts) {
    let d: string;
    try {
      d = decodeURIComponent(p);
    } catch {
      return bad("a part is not valid percent-encoding");
    }
    if (d === "" || d === "." || d === "..") return bad('every part must be a name (not empty, "." or "..")');
    if (/[/\\\x00-\x1f\x7f]/.test(d) || d.length > 255)
      return bad("a part holds a separator or control character");
    decoded.push(d);
  }
  return { refused: null, name, path: decoded.map(encodeURIComponent).join("/") };
}

/**
 * The request headers passed on to the master: those that make apt's and dnf's downloads cheap (a revalidation,
 * a resumed range). A range with `If-Range` is dropped rather than served unchecked: the whole file is
 * sent again, which is always right.
 */
export function forwardedHeaders(headers: Map<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  const since = headers.get("if-modified-since");
  if (since) out["if-modified-since"] = since;
  const range = headers.get("range");
  if (range && !headers.has("if-range")) out.range = range;
  return out;
}

// The answer's headers the job sees; anything else of the master's (its cookies, if any, its server) stays.
const PASSED = [
  "content-type",
  "content-length",
  "content-range",
  "accept-ranges",
  "last-modified",
  "cache-control",
];

/** The status line and headers of the master's answer, as the job is sent them: one exchange, then close. */
export function responseHead(res: Response): string {
  const lines = [`HTTP/1.1 ${res.status} ${res.statusText.replace(/[\r\n]/g, "") || "Status"}`];
  for (const h of PASSED) {
    const v = res.headers.get(h);
    if (v !== null) lines.push(`${h}: ${v.replace(/[\r\n]/g, "")}`);
  }
  lines.push("connection: close");
  return `${lines.join("\r\n")}\r\n\r\n`;
}

/**
 * Streams `body` to the job's socket. The next chunk is read only once the socket has taken the last one
 * (Outgoing queues what the kernel did not take), so memory stays at one chunk whatever the sizes and
 * speeds. Resolves true once everything was written, false when the job went away first (`signal`); rejects
 * when the master's stream broke, and the caller must then reset the job's connection, so a cut file is
 * never taken for a whole one.
 */
export async function pipeBody(
  out: Outgoing,
  body: ReadableStream<Uint8Array>,
  signal: AbortSignal,
): Promise<boolean> {
  const reader = body.getReader();
  // One waiter at a time: the socket's drain, or the job going away, wakes it.
  let wake: (() => void) | null = null;
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort, { once: true });
  out.onEmpty = () => wake?.();
  try {
    for (;;) {
      if (signal.aborted || out.closed) {
        await reader.cancel().catch(() => {});
        return false;
      }
      const { done, value } = await reader.read();
      if (done) return true;
      if (!out.write(value) && !signal.aborted) await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    wake = null;
    out.onEmpty = () => {};
    signal.removeEventListener("abort", onAbort);
    reader.releaseLock();
  }
}

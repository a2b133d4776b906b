import { chmodSync, createWriteStream, mkdirSync, statSync, unlinkSync, type WriteStream } from "node:fs";
import { dirname, join } from "node:path";
import type { Socket } from "bun";
import { coerceError } from "../lib/errors.ts";
import { artifactNameProblem, isName } from "../lib/names.ts";
import type { ArtifactBudget } from "../runner/artifact-budget.ts";
import { connectUpstream, type RelayEnd } from "./egress.ts";
import { Outgoing } from "./outgoing.ts";
import { forwardedHeaders, pipeBody, repoRequestPath, repoTarget, responseHead } from "./repo-proxy.ts";

/*
 * The job's API proxy: one Unix socket per job, which the sandbox forwards to $KILN_API on loopback
 * inside the job. It answers the job's own control requests (progress, mark-broken, upload) and, for the
 * upstream hosts the job was allowed with --egress, acts as an HTTP proxy (CONNECT for https, absolute
 * URIs for plain http) so `apt-get` with http_proxy works; and it serves the package repositories the job
 * uses (`--use-repo`) under /repos/NAME/ from the master (repo-proxy.ts). Anything else is refused: this
 * socket is the job's only way out of its network namespace.
 */

export interface ApiHandlers {
  jobId: number;
  attempt: number;
  egress: string[];
  /** The repositories the job uses (`--use-repo`): /repos/NAME/ reaches these and no other (none: absent). */
  useRepos?: string[];
  /**
   * Asks the master for `path` (percent-encoded, every part checked) of repository `name` with the job's
   * credential; resolves to the master's answer, whose body the proxy streams to the job.
   */
  repoFile?(
    name: string,
    path: string,
    init: { method: "GET" | "HEAD"; headers: Record<string, string>; signal: AbortSignal },
  ): Promise<Response>;
  /** Where uploaded artifacts go. */
  outDir: string;
  /** The job's artifact budget: every upload is counted against it before a byte is written. */
  artifacts: ArtifactBudget;
  progress(percent: number, message: string | null): void;
  markBroken(message: string): void;
  /** The newest version of package `pkg` in repository `repo`, from the master (`kiln job version`). */
  repoVersion(repo: string, pkg: string): Promise<{ version: string }>;
  /** Builds or fetches template NAME and attaches it read-only in the job; resolves to where. */
  template(name: string): Promise<string>;
}

interface Conn {
  head: Uint8Array;
  /**
   * What waits to be written to the job. Every write to the job's socket MUST go through it, and every
   * end of it be `out.end()` (a shutdown): the launcher's forwarder takes a socket closed outright
   * (Bun's `s.end()` does that) as abandoned and resets the job's connection.
   */
  out: Outgoing;
  /** Set once an egress tunnel is open: the job socket's events then belong to the relay. */
  relay: RelayEnd | null;
  /** The job sent its EOF before the tunnel was open. */
  ended: boolean;
  pending: Uint8Array[];
  body: {
    need: number;
    chunks: Uint8Array[];
    file: WriteStream | null;
    got: number;
    /** An upload refused by the artifact budget: its body is read and dropped, then this is the answer. */
    refused?: string;
  } | null;
  request: { method: string; target: string; headers: Map<string, string> } | null;
  /**
   * Set while a repository file streams to the job: aborted when the job's connection closes, which stops
   * the master's download. What the job sends meanwhile (pipelined requests) is dropped: the answer says
   * `connection: close`, and apt sends them again on a new connection.
   */
  download: AbortController | null;
}

const MAX_HEAD = 16 * 1024;
const MAX_JSON = 64 * 1024;
// One upload may not exceed this; artifacts larger than a disk image are not what $KILN_API is for.
const MAX_UPLOAD = 8 * 2 ** 30;

/** Is HOST:PORT allowed by the job's --egress list? "HOST" allows ports 80 and 443, "HOST:PORT" that port. */
export function egressAllows(egress: string[], host: string, port: number): boolean {
  const h = host.toLowerCase().replace(/\.$/, "");
  return egress.some((e) => {
    const [eh, ep] = e.toLowerCase().split(":");
    if (eh !== h) return false;
    return ep ? Number(ep) === port : port === 80 || port === 443;
  });
}

/** Addresses a job must never reach through the proxy, whatever name led there: the host itself. */
function forbiddenAddress(ip: string): boolean {
  return /^(127\.|0\.|169\.254\.|::1$|::$|fe80:|::ffff:127\.)/i.test(ip);
}

function respond(s: Socket<Conn>, status: number, body: unknown) {
  const text = JSON.stringify(body);
  const reason =
    {
      200: "OK",
      201: "Created",
      400: "Bad Request",
      403: "Forbidden",
      404: "Not Found",
      405: "Method Not Allowed",
      409: "Conflict",
      413: "Too Large",
      500: "Internal Server Error",
      502: "Bad Gateway",
    }[status] ?? "Error";
  s.data.out.write(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
  );
  s.data.out.end();
  // Read on (a tunnel being opened was paused) so the job's EOF is seen; what it still sends is dropped.
  s.resume();
}

/** Answers with Kiln's error shape, `{"error":{"code","message"}}`, and ends the exchange. */
function refuse(s: Socket<Conn>, status: number, code: string, message: string) {
  respond(s, status, { error: { code, message } });
}

function parseHead(head: string) {
  const [line, ...rest] = head.split("\r\n");
  const [method, target] = (line ?? "").split(" ");
  const headers = new Map<string, string>();
  for (const h of rest) {
    const i = h.indexOf(":");
    if (i > 0) headers.set(h.slice(0, i).trim().toLowerCase(), h.slice(i + 1).trim());
  }
  return { method: method ?? "", target: target ?? "", headers };
}

/** Starts the proxy on `path`; close() stops it and removes the socket. */
export function startApiProxy(path: string, h: ApiHandlers): { close(): void } {
  try {
    unlinkSync(path);
  } catch {
    // No leftover.
  }

  const api = (s: Socket<Conn>, method: string, url: URL, body: Uint8Array) => {
    const json = () => {
      try {
        return JSON.parse(new TextDecoder().decode(body)) as Record<string, unknown>;
      } catch {
        return null;
      }
    };
    if (method === "GET" && url.pathname === "/v1/job")
      return respond(s, 200, { id: h.jobId, attempt: h.attempt });
    if (method === "GET" && url.pathname === "/v1/version") {
      const repo = url.searchParams.get("repo") ?? "";
      const pkg = url.searchParams.get("pkg") ?? "";
      if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(repo) || repo.includes("..")) {
        return refuse(s, 400, "INVALID_NAME", `"${repo}" is not a repository name`);
      }
      if (!/^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$/.test(pkg)) {
        return refuse(s, 400, "INVALID_NAME", `"${pkg}" is not a package name`);
      }
      h.repoVersion(repo, pkg).then(
        (v) => respond(s, 200, v),
        (err) => {
          // The master's own answer (PACKAGE_NOT_FOUND, REPO_NOT_FOUND, ...) passes through as it was.
          const e = coerceError(err) as Error & { code?: string; status?: number };
          const status = e.status && e.status >= 400 && e.status < 500 ? e.status : 502;
          respond(s, status, { error: { code: e.code ?? "MASTER_UNREACHABLE", message: e.message } });
        },
      );
      return;
    }
    const tm = /^\/v1\/templates\/([^/]+)$/.exec(url.pathname);
    if (method === "GET" && tm) {
      const name = decodeURIComponent(tm[1]!);
      if (!isName(name)) {
        return refuse(s, 400, "INVALID_NAME", `"${name}" is not a template name`);
      }
      // A first use builds the template, which takes minutes: the job's request simply waits for it.
      h.template(name).then(
        (path) => respond(s, 200, { name, path }),
        (err) => refuse(s, 502, "TEMPLATE_FAILED", coerceError(err).message),
      );
      return;
    }
    if (method === "POST" && url.pathname === "/v1/progress") {
      const b = json();
      const percent = b?.percent;
      if (typeof percent !== "number" || !Number.isInteger(percent) || percent < 0 || percent > 100) {
        return refuse(s, 400, "INVALID_REQUEST", "percent must be a whole number from 0 to 100");
      }
      const message = typeof b?.message === "string" ? b.message.slice(0, 200) : null;
      h.progress(percent, message);
      return respond(s, 200, { percent, message });
    }
    if (method === "POST" && url.pathname === "/v1/mark-broken") {
      const message = json()?.message;
      if (typeof message !== "string" || message.trim() === "") {
        return refuse(s, 400, "INVALID_REQUEST", "a message saying what is broken is required");
      }
      h.markBroken(message.slice(0, 500));
      return respond(s, 200, { held: true, message });
    }
    return refuse(s, 404, "NOT_FOUND", `no such job API: ${method} ${url.pathname}`);
  };

  const tunnel = async (
    s: Socket<Conn>,
    host: string,
    port: number,
    first: Uint8Array | null,
    connectReply: boolean,
  ) => {
    if (!egressAllows(h.egress, host, port)) {
      return refuse(
        s,
        403,
        "EGRESS_DENIED",
        `${host}:${port} is not allowed for this job (submit with --egress ${host})`,
      );
    }
    let addr: string;
    try {
      addr = (await Bun.dns.lookup(host))[0]!.address;
    } catch {
      return refuse(s, 502, "EGRESS_DNS", `cannot resolve ${host}`);
    }
    if (forbiddenAddress(addr)) {
      return refuse(s, 403, "EGRESS_DENIED", `${host} resolves to ${addr}, which jobs may not reach`);
    }
    try {
      await connectUpstream(s.data.out, addr, port, (jobEnd) => {
        const c = s.data;
        c.relay = jobEnd;
        if (connectReply) c.out.write("HTTP/1.1 200 Connection established\r\n\r\n");
        const early = first ? [first, ...c.pending] : c.pending;
        c.pending = [];
        for (const p of early) jobEnd.data(p);
        if (c.ended) jobEnd.end();
      });
    } catch (err) {
      refuse(s, 502, "EGRESS_CONNECT", `cannot connect to ${host}:${port}: ${coerceError(err).message}`);
    }
  };

  /** A GET or HEAD of /repos/NAME/PATH: forwarded to the master when the job uses NAME, streamed back. */
  const repoFile = (s: Socket<Conn>, req: NonNullable<Conn["request"]>, path: string) => {
    if (req.method !== "GET" && req.method !== "HEAD")
      return refuse(s, 405, "METHOD_NOT_ALLOWED", "a repository is read with GET or HEAD");
    if (Number(req.headers.get("content-length") ?? 0) !== 0 || req.headers.has("transfer-encoding"))
      return refuse(s, 400, "INVALID_REQUEST", "a repository request has no body");
    const t = repoTarget(path, h.repoFile ? (h.useRepos ?? []) : []);
    if (t.refused !== null)
      return t.refused === "not-used"
        ? refuse(s, 404, "REPO_NOT_USED", t.message)
        : refuse(s, 400, "INVALID_PATH", t.message);
    const ask = h.repoFile!;
    const download = new AbortController();
    s.data.download = download;
    const method = req.method;
    let started = false;
    ask(t.name, t.path, { method, headers: forwardedHeaders(req.headers), signal: download.signal })
      .then(async (res) => {
        if (download.signal.aborted) return void (await res.body?.cancel().catch(() => {}));
        started = true;
        const out = s.data.out;
        out.write(responseHead(res));
        const whole = method === "HEAD" || !res.body || (await pipeBody(out, res.body, download.signal));
        if (whole) out.end();
        // Read on, dropping, so the job's EOF is seen.
        s.resume();
      })
      .catch((err) => {
        if (download.signal.aborted) return;
        // Part of an answer written: reset the connection, so the job's client sees a cut download, never
        // a short file that looks whole. Nothing written yet: the master could not be asked.
        if (started) return s.terminate();
        const e = coerceError(err) as Error & { code?: string };
        respond(s, 502, {
          error: { code: e.code ?? "MASTER_UNREACHABLE", message: `repository ${t.name}: ${e.message}` },
        });
      });
  };

  const onHead = (s: Socket<Conn>, headText: string, rest: Uint8Array) => {
    const req = parseHead(headText);
    s.data.request = req;
    const repoPath = repoRequestPath(req.target);
    if (repoPath !== null) return repoFile(s, req, repoPath);
    if (req.method === "CONNECT") {
      const m = /^\[?([A-Za-z0-9.:-]+?)\]?:(\d{1,5})$/.exec(req.target);
      if (!m) return refuse(s, 400, "INVALID_REQUEST", "CONNECT needs HOST:PORT");
      s.data.pending = rest.length ? [rest] : [];
      // Not read until the tunnel is open (connectUpstream resumes it), so `pending` stays small.
      s.pause();
      return void tunnel(s, m[1]!, Number(m[2]), null, true);
    }
    if (/^https?:\/\//i.test(req.target)) {
      let url: URL;
      try {
        url = new URL(req.target);
      } catch {
        return refuse(s, 400, "INVALID_REQUEST", "bad URL");
      }
      if (url.protocol !== "http:") return refuse(s, 400, "INVALID_REQUEST", "use CONNECT for https");
      // Rewrite to origin form and close after one exchange, so one connection never spans two hosts.
      const lines = headText
        .split("\r\n")
        .slice(1)
        .filter((l) => !/^(proxy-connection|connection|keep-alive):/i.test(l));
      const head = `${req.method} ${url.pathname}${url.search} HTTP/1.1\r\n${[...lines, "Connection: close"].join("\r\n")}\r\n\r\n`;
      s.data.pending = rest.length ? [rest] : [];
      s.pause();
      return void tunnel(s, url.hostname, Number(url.port || 80), new TextEncoder().encode(head), false);
    }
    let url: URL;
    try {
      url = new URL(req.target, "http://kiln.invalid");
    } catch {
      return refuse(s, 400, "INVALID_REQUEST", "bad request target");
    }
    const length = Number(req.headers.get("content-length") ?? 0);
    if (!Number.isInteger(length) || length < 0)
      return refuse(s, 400, "INVALID_REQUEST", "bad content-length");
    if (req.method === "POST" && url.pathname === "/v1/upload") {
      const name = url.searchParams.get("name") ?? "";
      const problem = artifactNameProblem(name);
      if (problem) {
        return refuse(s, 400, "INVALID_NAME", `${JSON.stringify(name)} is not an artifact name: ${problem}`);
      }
      if (length > MAX_UPLOAD) return refuse(s, 413, "TOO_LARGE", "artifact too large");
      // The name was checked part by part, and nothing in outDir is a link: Kiln alone writes there. An
      // earlier upload may still hold a file where this one needs a directory, or the reverse.
      const path = join(h.outDir, name);
      try {
        mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
        if (statSync(path, { throwIfNoEntry: false })?.isDirectory())
          throw new Error(`${name} is a directory`);
      } catch (err) {
        return refuse(
          s,
          409,
          "ARTIFACT_EXISTS",
          `artifact ${name} clashes with one uploaded before: ${coerceError(err).message}`,
        );
      }
      // Counted on the announced length, before the file exists; the body is cut at that length.
      // A refusal waits for the body: answering while the client still sends would reset its connection
      // before it reads why. The bytes are dropped, never written.
      const refused = h.artifacts.take(name, length);
      if (refused) {
        s.data.body = { need: length, chunks: [], file: null, got: 0, refused };
        return feedBody(s, rest);
      }
      const file = createWriteStream(path, { mode: 0o600 });
      // Without a listener a failed open or write (a full disk) would throw out of the worker.
      file.on("error", (err) =>
        refuse(s, 500, "UPLOAD_FAILED", `cannot store ${name}: ${coerceError(err).message}`),
      );
      s.data.body = { need: length, chunks: [], file, got: 0 };
      s.data.request.target = url.pathname + url.search;
      return feedBody(s, rest);
    }
    if (length > MAX_JSON) return refuse(s, 413, "TOO_LARGE", "request body too large");
    s.data.body = { need: length, chunks: [], file: null, got: 0 };
    feedBody(s, rest);
  };

  const feedBody = (s: Socket<Conn>, chunk: Uint8Array) => {
    const b = s.data.body!;
    const part = chunk.subarray(0, b.need - b.got);
    b.got += part.length;
    // A job can send faster than the disk takes it: stop reading its socket until the file drains.
    if (b.file && !b.file.write(part)) {
      s.pause();
      b.file.once("drain", () => s.resume());
    } else if (b.refused === undefined) b.chunks.push(part);
    if (b.got < b.need) return;
    if (b.refused !== undefined) return refuse(s, 413, "ARTIFACT_BUDGET", b.refused);
    const req = s.data.request!;
    const url = new URL(req.target, "http://kiln.invalid");
    if (b.file) {
      const name = url.searchParams.get("name")!;
      // The file's permission bits as `kiln job upload` read them; never write for others, never set-id.
      const mode = /^[0-7]{1,4}$/.test(req.headers.get("x-kiln-mode") ?? "")
        ? Number.parseInt(req.headers.get("x-kiln-mode")!, 8) & 0o755
        : 0o600;
      b.file.end(() => {
        try {
          chmodSync(b.file!.path as string, mode);
        } catch (err) {
          return refuse(s, 500, "UPLOAD_FAILED", `cannot store ${name}: ${coerceError(err).message}`);
        }
        respond(s, 201, { name, size: b.got });
      });
      return;
    }
    api(s, req.method, url, Buffer.concat(b.chunks));
  };

  const server = Bun.listen<Conn>({
    unix: path,
    // Half-open, so a job that sends its EOF (a tunnelled client's FIN) still gets every byte of the answer.
    allowHalfOpen: true,
    socket: {
      open(s) {
        s.data = {
          head: new Uint8Array(0),
          out: new Outgoing(s as Socket<unknown>),
          relay: null,
          ended: false,
          pending: [],
          body: null,
          request: null,
          download: null,
        };
      },
      data(s, chunk) {
        const c = s.data;
        if (c.relay) return c.relay.data(chunk);
        if (c.download) return;
        if (c.out.ended) return; // answered already: nothing more is read from this request
        if (c.request && !c.body) return void c.pending.push(chunk);
        if (c.body) return feedBody(s, chunk);
        const all = Buffer.concat([c.head, chunk]);
        const end = all.indexOf("\r\n\r\n");
        if (end < 0) {
          if (all.length > MAX_HEAD) refuse(s, 400, "INVALID_REQUEST", "request head too large");
          else c.head = all;
          return;
        }
        onHead(s, all.subarray(0, end).toString("latin1"), all.subarray(end + 4));
      },
      drain(s) {
        if (s.data.relay) s.data.relay.drain();
        else s.data.out.drain();
      },
      end(s) {
        const c = s.data;
        if (c.relay) return c.relay.end();
        // A tunnel being opened passes the EOF on once it is open. A complete request still gets its
        // answer (respond ends the socket); an incomplete one never will.
        if (c.request && !c.body) c.ended = true;
        else if (!c.body || c.body.got < c.body.need) c.out.end();
      },
      close(s, error) {
        s.data.download?.abort();
        if (s.data.relay) s.data.relay.close(error);
        else s.data.out.markClosed();
        s.data.body?.file?.destroy();
      },
      error(s) {
        // A handler threw, so this connection's state is unknown: reset it (its close passes that on).
        s.terminate();
      },
    },
  });
  return {
    close() {
      server.stop(true);
      try {
        unlinkSync(path);
      } catch {
        // Already gone.
      }
    },
  };
}

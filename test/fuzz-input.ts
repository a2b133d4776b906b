/*
 * Hostile input for the master, generated from its route table (src/master/app.ts routeTable) by a seeded
 * generator, so a failing run is repeated exactly by giving the same seed. Every case says what it is
 * (`what`, printed when an answer is wrong) and what the master may answer: any case may be refused, none
 * may get a 5xx; `refuse` cases must get a 4xx (or, for framing the runtime refuses before Kiln runs, the
 * runtime's own 4xx/505 or a closed connection).
 */

/** A small, fast, seeded generator (mulberry32): the same seed gives the same cases. */
export function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (n: number) => Math.floor(next() * n),
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
    chance: (p: number) => next() < p,
  };
}
/** A generator made by rng(). */
export type Rng = ReturnType<typeof rng>;

/** One HTTP request to send through fetch. */
export interface HttpCase {
  kind: "http";
  what: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** True when the request is wrong on purpose and must be refused with a 4xx. */
  refuse: boolean;
  /** The one status it must get, where that is certain. */
  status?: number;
}

/** Bytes sent on a raw connection: framing fetch would never produce. */
export interface RawCase {
  kind: "raw";
  what: string;
  bytes: Uint8Array;
  /** Close our side after writing (a truncated request). */
  end: boolean;
  /** The error code Kiln itself must answer with (JSON), where the runtime must not answer first. */
  code?: string;
}

// Lengths Kiln refuses itself, with its JSON, before reading the body (not the runtime's bare 413).
const KILN_ANSWERS: Record<string, string> = {
  "a declared 1 GiB body": "BODY_TOO_LARGE",
  "a declared 1 GiB upload": "BODY_TOO_LARGE",
  "a chunked body past every limit": "BODY_TOO_LARGE",
};

/** One generated case. */
export type FuzzCase = HttpCase | RawCase;

/** What the generator needs to know of the master under test. */
export interface Target {
  routes: { method: string; path: string }[];
  token: string;
  /** A job that exists, so some requests get past the lookup to the validation behind it. */
  jobId: number;
}

const enc = new TextEncoder();

// Values for a path parameter: valid ones (so later checks run) and every way of climbing out or
// smuggling something into a name.
const HOSTILE_NAMES = [
  "..",
  "%2e%2e",
  "..%2F..%2Fetc%2Fpasswd",
  "%2e%2e%2f%2e%2e%2fetc",
  "a%00b",
  "%00",
  ".hidden",
  "-rf",
  "UPPER",
  "a%20b",
  "a%0Ab",
  "caf%C3%A9",
  "%C0%AE%C0%AE",
  "%FF%FE",
  "x".repeat(300),
  "y".repeat(5000),
  "SHA256SUMS",
  "sha256sums",
  "__proto__",
  "constructor",
  "a..b",
  "%252e%252e",
  "....//",
  "a\\b",
];
const VALID = { name: "fuzz-w", slot: "slot-0", tag: "v1", file: "SHA256SUMS", attempt: "1" };

/** A value of a JSON type picked at random, some of them huge, deep or strange. */
function jsonJunk(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 2 ? 9 : 12)) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick([0, -1, 1.5, 1e308, -1e308, 2 ** 53 + 1, Number.MAX_SAFE_INTEGER]);
    case 3:
      return "";
    case 4:
      return r.pick(HOSTILE_NAMES);
    case 5:
      return "x".repeat(r.pick([1, 100, 70_000, 200_000]));
    case 6:
      return "\u0000\u001b[31m\u2028\ud800";
    case 7:
      return "../../../../etc/passwd";
    case 8:
      return "ok";
    case 9:
      return Array.from({ length: r.int(4) }, () => jsonJunk(r, depth + 1));
    case 10:
      return Object.fromEntries(
        Array.from({ length: r.int(4) }, () => [
          r.pick(["a", "__proto__", "constructor", "type"]),
          jsonJunk(r, depth + 1),
        ]),
      );
    default:
      return { __proto__: { polluted: true }, toString: 1, valueOf: "x" };
  }
}

/**
 * A plausible body for each route that takes a JSON one, the starting point for mutations; null for the
 * others (a POST such as cancel reads no body, so whatever it is sent is not a refusal of its own).
 */
function sampleBody(method: string, path: string): Record<string, unknown> | null {
  if (method !== "POST") return null;
  if (path === "/api/v1/jobs") return { command: ["true"], env: { A: "1" }, project: "fuzz" };
  if (path.endsWith("/hold")) return { reason: "fuzz" };
  if (path === "/api/v1/admin/tokens") return { role: "viewer", name: "fuzz" };
  if (path === "/api/v1/recipes") return { name: "fuzz", source: 'description = "x"\nscript = "true"\n' };
  if (path === "/api/v1/templates")
    return { name: "fuzz", recipe: { kind: "script", base: "b", script: "true", packages: [] } };
  if (path.endsWith("/build")) return { workers: ["fuzz-w"] };
  if (path === "/api/v1/releases") return { job: 1, artifact: "SHA256SUMS", tag: "fuzz" };
  if (path.startsWith("/api/v1/tls/")) return { secret: "s", csr: "c" };
  if (path === "/api/v1/repos") return { name: "fuzz", format: "deb", archs: ["amd64"], keep: 2 };
  if (path.endsWith("/publish")) return { job: 1, artifacts: ["a.deb"], force: false };
  return null;
}

/** Changes one thing in `body`: a field's type, a missing or unknown field, a wrapper, a scalar. */
function mutate(r: Rng, body: Record<string, unknown>): { value: unknown; what: string } {
  const keys = Object.keys(body);
  switch (r.int(7)) {
    case 0: {
      const k = keys.length ? r.pick(keys) : "x";
      const v = jsonJunk(r);
      return { value: { ...body, [k]: v }, what: `field ${k} set to ${JSON.stringify(v)?.slice(0, 60)}` };
    }
    case 1: {
      const k = keys.length ? r.pick(keys) : "x";
      const { [k]: _, ...rest } = body;
      return { value: rest, what: `field ${k} left out` };
    }
    case 2:
      return {
        value: { ...body, [r.pick(["extra", "__proto__", "constructor"])]: 1 },
        what: "an unknown field",
      };
    case 3:
      return { value: [body], what: "the body wrapped in an array" };
    case 4:
      return { value: jsonJunk(r), what: "a body of another type" };
    case 5:
      // JSON.parse makes "__proto__" an own key, as a server parsing the body would see it.
      return {
        value: { ...body, env: JSON.parse(`{"__proto__":"x","constructor":"y","${"K".repeat(300)}":"v"}`) },
        what: "env with prototype keys",
      };
    default: {
      const k = keys.length ? r.pick(keys) : "x";
      return { value: { ...body, [k]: { nested: [[[[body]]]] } }, what: `field ${k} nested` };
    }
  }
}

/** Bytes that are not JSON, or not UTF-8, or JSON only at first sight. */
function badBytes(r: Rng, sample: string): { bytes: Uint8Array; what: string; bom?: boolean } {
  switch (r.int(7)) {
    case 0:
      return {
        bytes: enc.encode(sample.slice(0, Math.max(1, r.int(sample.length)))),
        what: "truncated JSON",
      };
    case 1: {
      // Inside the first string value of a body that is otherwise right, where a lenient decoder would
      // pass a replacement character on as data.
      const at = sample.indexOf(':"') + 2;
      if (at < 2)
        return { bytes: new Uint8Array([0x22, 0xc3, 0x28, 0x22]), what: "invalid UTF-8 in a string" };
      const head = enc.encode(sample.slice(0, at));
      return {
        bytes: new Uint8Array([...head, 0xc3, 0x28, 0xff, ...enc.encode(sample.slice(at))]),
        what: "invalid UTF-8 in a string value",
      };
    }
    case 2:
      return { bytes: Uint8Array.from({ length: 256 }, () => r.int(256)), what: "random bytes" };
    case 3:
      return {
        bytes: enc.encode(`${"[".repeat(100_000)}${"]".repeat(100_000)}`),
        what: "JSON nested 100000 deep",
      };
    case 4:
      // RFC 8259 8.1 lets a parser ignore a byte order mark; the master does, so this one may pass.
      return {
        bytes: new Uint8Array([0xef, 0xbb, 0xbf, ...enc.encode(sample)]),
        what: "a byte order mark before JSON",
        bom: true,
      };
    case 5:
      return { bytes: enc.encode(`${sample}${sample}`), what: "two JSON values" };
    default:
      return { bytes: new Uint8Array([0xff, 0xfe, 0x7b, 0x00, 0x7d, 0x00]), what: "UTF-16 JSON" };
  }
}

const fill = (r: Rng, t: Target, path: string, hostile: boolean) =>
  path.replace(/:([A-Za-z]+)(\{[^}]*\})?/g, (_, p: string) => {
    if (hostile && r.chance(0.7)) return r.pick(HOSTILE_NAMES);
    if (p === "id")
      return hostile && r.chance(0.3)
        ? r.pick(["-1", "1e3", "0x10", "99999999999999999999", "1.5"])
        : String(t.jobId);
    return (VALID as Record<string, string>)[p] ?? "a";
  });

const METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"];

/** `n` HTTP cases over the route table. */
export function httpCases(r: Rng, t: Target, n: number): HttpCase[] {
  const out: HttpCase[] = [];
  const auth = { authorization: `Bearer ${t.token}` };
  for (let i = 0; i < n; i++) {
    // Every route once first, then at random: a table that grows never leaves one untried.
    const route = i < t.routes.length ? t.routes[i]! : r.pick(t.routes);
    const mode = r.int(8);
    const path = fill(r, t, route.path, mode === 0);
    const sample = sampleBody(route.method, route.path);
    const json = { ...auth, "content-type": "application/json" };
    if (mode === 0) {
      out.push({
        kind: "http",
        what: `${route.method} ${path} with a hostile name`,
        method: route.method,
        path,
        headers: json,
        body: sample ? JSON.stringify(sample) : undefined,
        refuse: false,
      });
    } else if (mode === 1) {
      const allowed = new Set(t.routes.filter((x) => x.path === route.path).map((x) => x.method));
      const wrong = METHODS.filter(
        (m) => !allowed.has(m) && !(m === "HEAD" && allowed.has("GET")) && m !== "OPTIONS",
      );
      if (wrong.length === 0) continue;
      const method = r.pick(wrong);
      out.push({
        kind: "http",
        what: `${method} on ${[...allowed].join("/")}-only ${path}`,
        method,
        path,
        headers: auth,
        refuse: true,
        // The app's own routes answer 405 with Allow; the websocket and TLS routes are served before it.
        status: path.startsWith("/api/v1/tls/") || path === "/api/v1/worker/connect" ? undefined : 405,
      });
    } else if (mode <= 3 && sample) {
      const m = mutate(r, sample);
      out.push({
        kind: "http",
        what: `${route.method} ${path}: ${m.what}`,
        method: route.method,
        path,
        headers: json,
        body: JSON.stringify(m.value),
        refuse: false,
      });
    } else if (mode <= 5 && sample) {
      const b = badBytes(r, JSON.stringify(sample));
      out.push({
        kind: "http",
        what: `${route.method} ${path}: ${b.what}`,
        method: route.method,
        path,
        headers: json,
        body: b.bytes,
        refuse: !b.bom,
      });
    } else if (mode === 6 && (route.method === "POST" || route.method === "PUT")) {
      // Past every JSON route's limit (the largest, a template's, is 3 MiB); an upload or a route that
      // reads no body answers as it likes, but never with a 5xx.
      const size = r.pick([(1 << 20) + 1, 3 << 20, 6 << 20]);
      out.push({
        kind: "http",
        what: `${route.method} ${path}: a body of ${size} bytes`,
        method: route.method,
        path,
        headers: json,
        body: enc.encode(`{"a":"${"x".repeat(size)}"}`),
        refuse: sample !== null && size > 3 << 20,
      });
    } else {
      const q = r.pick([
        "?offset=-1",
        "?offset=abc&follow=2",
        "?limit=0",
        "?limit=99999",
        "?state=nope",
        "?before=x",
        "?version=0",
        "?version=../1",
        "?project=..%2F",
        `?sha256=${"z".repeat(64)}`,
        "?%ZZ=1",
        "?a=%00",
      ]);
      const headers: Record<string, string> = r.chance(0.8) ? { ...auth } : {};
      if (r.chance(0.3))
        headers.range = r.pick([
          "bytes=9-3",
          "bytes=-0",
          "bytes=99999999999999999999-",
          "lines=1-2",
          "bytes=0-1,2-3",
        ]);
      if (r.chance(0.3)) headers["x-kiln-sha256"] = r.pick(["zz", "0".repeat(64), "../"]);
      if (r.chance(0.2))
        headers.authorization = r.pick([
          "Bearer ",
          "Basic YTpi",
          `Bearer ${"k".repeat(10_000)}`,
          "Bearer a\u00ffb",
        ]);
      out.push({
        kind: "http",
        what: `${route.method} ${path}${q} with odd headers`,
        method: route.method,
        path: path + q,
        headers,
        refuse: false,
      });
    }
  }
  return out;
}

/** Requests only a raw connection can send: broken framing, NUL bytes, lengths that lie. */
export function rawCases(r: Rng, t: Target, n: number): RawCase[] {
  const auth = `Authorization: Bearer ${t.token}\r\n`;
  const templates: [string, () => string, boolean][] = [
    ["a NUL in the request line", () => "GET /health\u0000z HTTP/1.1\r\nHost: x\r\n\r\n", false],
    ["a NUL in a header", () => `GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\u0000b\r\n\r\n`, false],
    ["garbage for a request line", () => "\u0016\u0003\u0001\u0002\u0000\u0001\r\n\r\n", false],
    [
      "a bad chunk size",
      () => `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n${auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n`,
      false,
    ],
    [
      "a body shorter than its length",
      () => `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: 5000\r\n\r\n{"command":`,
      true,
    ],
    [
      "a declared 1 GiB body",
      () =>
        `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: ${2 ** 30}\r\n\r\n${"[".repeat(65536)}`,
      false,
    ],
    [
      "a declared 1 GiB upload",
      () =>
        `PUT /api/v1/worker/artifacts/${t.jobId}/1/a HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: ${2 ** 30}\r\n\r\n${"a".repeat(65536)}`,
      false,
    ],
    [
      "a chunked body past every limit",
      () =>
        `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n${auth}Transfer-Encoding: chunked\r\n\r\n${`10000\r\n${"[".repeat(65536)}\r\n`.repeat(40)}0\r\n\r\n`,
      false,
    ],
    [
      "both Content-Length and chunked",
      () =>
        `POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`,
      false,
    ],
    [
      "a header line 100 KiB long",
      () => `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(100_000)}\r\n\r\n`,
      false,
    ],
    ["10000 headers", () => `GET /healthz HTTP/1.1\r\nHost: x\r\n${"X-A: b\r\n".repeat(10_000)}\r\n`, false],
    ["HTTP/0.9", () => "GET /\r\n", true],
    ["a relative request target", () => "GET healthz HTTP/1.1\r\nHost: x\r\n\r\n", false],
    [
      "an absolute-form target to elsewhere",
      () => "GET http://169.254.169.254/latest HTTP/1.1\r\nHost: x\r\n\r\n",
      false,
    ],
    [
      "a path with encoded traversal",
      () =>
        `GET /api/v1/jobs/${t.jobId}/artifacts/..%2F..%2F..%2Fetc%2Fpasswd HTTP/1.1\r\nHost: x\r\n${auth}\r\n`,
      false,
    ],
    ["a path with raw traversal", () => `GET /releases/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n`, false],
    ["CONNECT", () => "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", false],
    ["an invented method", () => "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", false],
    ["non-UTF-8 in the path", () => "GET /api/v1/recipes/\u00ff\u00fe HTTP/1.1\r\nHost: x\r\n\r\n", false],
  ];
  return Array.from({ length: n }, () => {
    const [what, make, end] = r.pick(templates);
    // latin1: each char one byte, so \u00ff goes out as the byte 0xff.
    return { kind: "raw", what, bytes: Buffer.from(make(), "latin1"), end, code: KILN_ANSWERS[what] };
  });
}

/** A client websocket frame (RFC 6455 5.2), masked unless `masked` is false, its length field free to lie. */
export function wsFrame(
  opcode: number,
  payload: Uint8Array,
  o: { masked?: boolean; declared?: number; fin?: boolean } = {},
): Uint8Array {
  const len = o.declared ?? payload.length;
  const head: number[] = [(o.fin === false ? 0 : 0x80) | opcode];
  const m = o.masked === false ? 0 : 0x80;
  if (len < 126) head.push(m | len);
  else if (len < 65536) head.push(m | 126, len >> 8, len & 255);
  else {
    head.push(m | 127);
    for (let i = 7; i >= 0; i--) head.push(Math.floor(len / 2 ** (8 * i)) & 255);
  }
  // A zero key is a valid mask (RFC 6455 5.3) and spares masking megabytes byte by byte.
  const zero = payload.length > 65536;
  const key = zero ? [0, 0, 0, 0] : [0x12, 0x34, 0x56, 0x78];
  const body = o.masked === false || zero ? payload : payload.map((b, i) => b ^ key[i % 4]!);
  return Buffer.concat([Buffer.from(head), Buffer.from(o.masked === false ? [] : key), Buffer.from(body)]);
}

/** One attack on the worker socket: frames sent after a hello (or instead of one). */
export interface WsCase {
  what: string;
  /** Say a valid hello first, so the frames reach the message handlers. */
  hello: boolean;
  frames: Uint8Array[];
  /** Close our side of the TCP connection after the frames (a truncated frame). */
  end: boolean;
  /** The close code the master must send, where Kiln (not the runtime) refuses the frame. */
  code?: number;
}

// Kiln's own refusals (src/master/worker-socket.ts): 4400 a frame it cannot read, 4000 a bad worker
// name, 4002 anything before a hello. The runtime's (1002, 1007, 1009) are left free.
const CLOSE_CODES: Record<string, number> = {
  "a text frame that is not JSON": 4400,
  "a message with fields of the wrong type": 4400,
  "a hello with a traversal name": 4000,
  "a hello with 10000 channels": 4400,
  "a binary log frame of two bytes": 4400,
  "a log frame whose header length lies": 4400,
  "a log frame with a negative offset": 4400,
  "a log frame with a huge offset": 4400,
  "a log frame whose header is not JSON": 4400,
  "frames before any hello": 4002,
};

/** `n` attacks on the worker and log sockets: bad messages, bad log frames, truncated and oversized frames. */
export function wsCases(r: Rng, n: number): WsCase[] {
  const text = (s: string) => wsFrame(1, enc.encode(s));
  const bin = (b: Uint8Array) => wsFrame(2, b);
  const logHeader = (h: unknown) => {
    const j = enc.encode(JSON.stringify(h));
    const out = new Uint8Array(4 + j.length + 8);
    new DataView(out.buffer).setUint32(0, j.length);
    out.set(j, 4);
    return out;
  };
  const templates: [string, boolean, () => Uint8Array[], boolean][] = [
    ["a text frame that is not JSON", true, () => [text("{nope")], false],
    [
      "a message with fields of the wrong type",
      true,
      () => [text(JSON.stringify({ type: "job.finished", jobId: "1", attempt: [], outcome: 5 }))],
      false,
    ],
    [
      "a hello with a traversal name",
      false,
      () => [
        text(
          JSON.stringify({
            type: "worker.hello",
            name: "../../etc",
            arch: "amd64",
            channels: [],
            version: "x",
            slots: [],
            running: [],
            finished: [],
          }),
        ),
      ],
      false,
    ],
    [
      "a hello with 10000 channels",
      false,
      () => [
        text(
          JSON.stringify({
            type: "worker.hello",
            name: "fuzz-many",
            arch: "amd64",
            channels: Array(10_000).fill("c"),
            version: "x",
            slots: [],
            running: [],
            finished: [],
          }),
        ),
      ],
      false,
    ],
    ["a message of an unknown type", true, () => [text(JSON.stringify({ type: "worker.takeover" }))], false],
    [
      "invalid UTF-8 in a text frame",
      true,
      () => [wsFrame(1, new Uint8Array([0x7b, 0xc3, 0x28, 0x7d]))],
      false,
    ],
    ["a binary log frame of two bytes", true, () => [bin(new Uint8Array([1, 2]))], false],
    [
      "a log frame whose header length lies",
      true,
      () => [bin(new Uint8Array([0xff, 0xff, 0xff, 0xff, 1, 2, 3]))],
      false,
    ],
    ["a log frame with a negative offset", true, () => [bin(logHeader({ j: 1, a: 1, o: -100 }))], false],
    ["a log frame with a huge offset", true, () => [bin(logHeader({ j: 1, a: 1, o: 2 ** 60 }))], false],
    [
      "a log frame whose header is not JSON",
      true,
      () => [bin(Buffer.from("\u0000\u0000\u0000\u0003{{{", "latin1"))],
      false,
    ],
    [
      "a frame truncated mid-payload",
      true,
      () => [wsFrame(1, enc.encode('{"type":"worker.heart'), { declared: 1000 })],
      true,
    ],
    ["a frame truncated mid-header", true, () => [Buffer.from([0x81, 0xfe, 0x03])], true],
    ["a frame declaring 1 GiB", true, () => [wsFrame(2, new Uint8Array(1024), { declared: 2 ** 30 })], false],
    ["a frame of 17 MiB, past the payload limit", true, () => [wsFrame(2, new Uint8Array(17 << 20))], false],
    ["an unmasked client frame", true, () => [wsFrame(1, enc.encode("{}"), { masked: false })], false],
    ["a reserved opcode", true, () => [wsFrame(3, enc.encode("x"))], false],
    ["a continuation with nothing to continue", true, () => [wsFrame(0, enc.encode("x"))], false],
    ["a fragmented control frame", true, () => [wsFrame(9, enc.encode("x"), { fin: false })], false],
    ["a close frame with a bad code", true, () => [wsFrame(8, new Uint8Array([0x03, 0xe7]))], false],
    [
      "frames before any hello",
      false,
      () => [
        bin(logHeader({ j: 1, a: 1, o: 0 })),
        text(JSON.stringify({ type: "worker.heartbeat", running: [] })),
      ],
      false,
    ],
  ];
  return Array.from({ length: n }, () => {
    const [what, hello, frames, end] = r.pick(templates);
    return { what, hello, frames: frames(), end, code: CLOSE_CODES[what] };
  });
}

import { expect, test } from "bun:test";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { ERROR_CODES, renderErrorsDoc } from "./error-codes.ts";
import { AppError, badRequest, notFound } from "./errors.ts";

/*
 * The registry in error-codes.ts is the one list of codes. These tests read src/ as text, find every
 * place a code is raised or answered with, and hold each against the registry; they also keep
 * docs/errors.md generated from it.
 */

const ROOT = join(import.meta.dir, "..", "..");
const DOC = join(ROOT, "docs", "errors.md");

/** One place in src/ that raises or answers with an error code. */
interface Site {
  where: string;
  /** Null when the site passes a code on from a variable. */
  code: string | null;
  /** The HTTP status written at the site, if it writes one. */
  status: number | null;
  text: string;
}

const CODE_SHAPE = /^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$/;

function literal(arg: string | undefined, shape = CODE_SHAPE): string | null {
  const m = /^"([^"\\]*)"$/.exec(arg?.trim() ?? "");
  return m && shape.test(m[1]!) ? m[1]! : null;
}

const statusIn = (text: string | undefined) => {
  const m = /\bstatus:\s*(\d{3})\b/.exec(text ?? "");
  return m ? Number(m[1]) : null;
};

/**
 * Every construction pattern in use: which argument holds the code and which the status.
 * `notFound("job", id)` makes JOB_NOT_FOUND; `badRequest(msg)` without a code makes BAD_REQUEST; the
 * job API's `refuse(socket, status, code, message)` and answers written as `{ error: { code: ... } }`.
 */
const PATTERNS: {
  re: RegExp;
  code: (args: string[]) => string | null;
  status: (args: string[], after: string) => number | null;
}[] = [
  { re: /\bnew AppError\(/g, code: (a) => literal(a[0]), status: (a) => statusIn(a[2]) },
  {
    re: /(?<![.\w])badRequest\(/g,
    code: (a) => (a[1] === undefined ? "BAD_REQUEST" : literal(a[1])),
    status: () => 400,
  },
  {
    re: /(?<![.\w])notFound\(/g,
    code: (a) => {
      const what = literal(a[0], /^[a-z]+$/);
      return what ? `${what.toUpperCase()}_NOT_FOUND` : null;
    },
    status: () => 404,
  },
  { re: /(?<![.\w])holdLock\(/g, code: (a) => literal(a[2]), status: () => 409 },
  { re: /(?<![.\w])refuse\(/g, code: (a) => literal(a[2]), status: (a) => Number(a[1]) || null },
  // The enrollment's refusals: `refused(code, message[, status])`, 401 unless it says otherwise.
  {
    re: /(?<![.\w])refused\(/g,
    code: (a) => literal(a[0]),
    status: (a) => (a[2] === undefined ? 401 : Number(a[2]) || null),
  },
  // An answer written by hand: the code up to the next comma, the status in the call that sends it.
  {
    re: /\berror: \{ code:/g,
    code: (a) => literal(a[0]),
    status: (_, after) => Number(/(?:status:\s*|\},\s*)(\d{3})\b/.exec(after.slice(0, 300))?.[1]) || null,
  },
];

/**
 * The sites that may pass a code on from a variable: the helpers themselves, and clients reading answers.
 * They are source text, so the `${...}` in them is meant.
 */
const DYNAMIC = [
  "src/lib/errors.ts: new AppError(code, message, { status: 400 }",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: source text quoted as it is
  "src/lib/errors.ts: new AppError(`${what.toUpperCase()}_NOT_FOUND`",
  // biome-ignore lint/suspicious/noTemplateCurlyInString: source text quoted as it is
  "src/lib/errors.ts: new AppError(e?.code ?? `HTTP_${res.status}`",
  'src/lib/lock.ts: new AppError(code, busy(other || "another process"), { status: 409 }',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: source text quoted as it is
  "src/cli/client.ts: new AppError(e?.code ?? `HTTP_${res.status}`",
  "src/master/app.ts: error: { code:err.code",
  "src/store/enrollment.ts: new AppError(code, message, { status }",
  "src/tls/proof.ts: new AppError(code, msg, { status: 401 }",
  "src/tls/enroll.ts: error: { code:e.code",
  'src/job-api/api-proxy.ts: error: { code:e.code ?? "MASTER_UNREACHABLE"',
];

/** The arguments of the call whose "(" is at `open`, split at top-level commas; strings and brackets skipped. */
function argsAt(src: string, open: number): string[] {
  const args: string[] = [];
  let depth = 0;
  let start = open + 1;
  for (let i = open + 1; i < src.length; i++) {
    const c = src[i]!;
    if (c === '"' || c === "'" || c === "`") {
      for (i++; i < src.length && src[i] !== c; i++) if (src[i] === "\\") i++;
    } else if (c === "(" || c === "[" || c === "{") depth++;
    else if (c === ")" || c === "]" || c === "}" || (c === "," && depth === 0)) {
      if (c !== "," && depth > 0) {
        depth--;
        continue;
      }
      args.push(src.slice(start, i));
      if (c !== ",") break;
      start = i + 1;
    }
  }
  return args.filter((a) => a.trim() !== "");
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory()
      ? sources(join(dir, e.name))
      : e.name.endsWith(".ts") && !e.name.endsWith(".test.ts")
        ? [join(dir, e.name)]
        : [],
  );
}

function errorSites(): Site[] {
  const out: Site[] = [];
  for (const path of sources(join(ROOT, "src"))) {
    const text = readFileSync(path, "utf8");
    for (const p of PATTERNS) {
      for (const m of text.matchAll(p.re)) {
        const end = m.index + m[0].length;
        // A helper's own declaration (`function refuse(s: Socket, ...)`) is not a site.
        if (/function\s+\w+\($/.test(text.slice(Math.max(0, m.index - 20), end))) continue;
        const args = argsAt(text, end - 1);
        const short = `${m[0]}${args.map((a) => a.trim()).join(", ")}`.replace(/\s+/g, " ");
        out.push({
          where: `${relative(ROOT, path)}:${text.slice(0, m.index).split("\n").length}`,
          code: p.code(args),
          status: p.status(args, text.slice(end)),
          text: `${relative(ROOT, path)}: ${short}`,
        });
      }
    }
  }
  return out;
}

const sites = errorSites();

test("the scan finds the construction patterns in use (a scan that finds nothing would pass vacuously)", () => {
  const codes = new Set(sites.map((s) => s.code));
  for (const c of [
    "USAGE",
    "JOB_NOT_FOUND",
    "BAD_REQUEST",
    "WORKER_NAME_IN_USE",
    "EGRESS_DENIED",
    "UPGRADE_REQUIRED",
  ])
    expect(codes).toContain(c);
  expect(sites.length).toBeGreaterThan(100);
});

test("every error code raised in src/ is in the registry", () => {
  const missing = sites
    .filter((s) => s.code !== null && !ERROR_CODES[s.code])
    .map((s) => `${s.code} at ${s.where}`);
  expect(missing, "add these codes to src/lib/error-codes.ts").toEqual([]);
});

test("a code passed on from a variable appears only in the helpers that are meant to do it", () => {
  const dynamic = sites
    .filter((s) => s.code === null)
    .map((s) => s.text)
    .filter((t) => !DYNAMIC.some((d) => t.startsWith(d)));
  expect(
    dynamic,
    'raise a literal code (`new AppError("CODE", ...)`) so the registry test can see it',
  ).toEqual([]);
});

test("a status written at a call site agrees with the registry's status for its code", () => {
  const wrong = sites
    .filter(
      (s) => s.code && s.status !== null && ERROR_CODES[s.code] && ERROR_CODES[s.code]!.status !== s.status,
    )
    .map((s) => `${s.code} at ${s.where}: ${s.status}, registry ${ERROR_CODES[s.code!]!.status}`);
  expect(wrong).toEqual([]);
});

test("every registered code is still raised somewhere, with a meaning and a status", () => {
  const used = new Set(sites.map((s) => s.code));
  expect(
    Object.keys(ERROR_CODES).filter((c) => !used.has(c)),
    "remove codes nothing raises",
  ).toEqual([]);
  for (const [code, e] of Object.entries(ERROR_CODES)) {
    expect(code).toMatch(CODE_SHAPE);
    expect(e.meaning.length).toBeGreaterThan(10);
    expect(e.status >= 400 && e.status < 600).toBe(true);
  }
});

test("an AppError takes its code's registered status unless the call site gives one", () => {
  expect(new AppError("JOB_ENDED", "m").status).toBe(409);
  expect(new AppError("JOB_ENDED", "m", { status: 410 }).status).toBe(410);
  expect(new AppError("SOMETHING_UNREGISTERED", "m").status).toBe(400);
  expect(notFound("worker", "w1")).toMatchObject({ code: "WORKER_NOT_FOUND", status: 404 });
  expect(badRequest("m")).toMatchObject({ code: "BAD_REQUEST", status: 400 });
});

test("docs/errors.md is generated from the registry", () => {
  const want = renderErrorsDoc();
  if (process.env.KILN_WRITE_DOCS) writeFileSync(DOC, want);
  let have = "";
  try {
    have = readFileSync(DOC, "utf8");
  } catch {
    // Missing: the comparison below fails and says how to make it.
  }
  expect(
    have === want,
    "docs/errors.md is stale: run `KILN_WRITE_DOCS=1 bun test src/lib/errors.test.ts`",
  ).toBe(true);
});

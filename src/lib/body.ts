import type { z } from "zod";
import { AppError, badRequest } from "./errors.ts";

/*
 * Request bodies are bounded before they are read: a client that sends more than a route takes gets a 413
 * and costs the server at most the limit, whether it declared its length or streams chunks. JSON bodies
 * are then decoded as strict UTF-8 and checked by the route's zod schema (src/protocol/api.ts and the
 * TLS routes' own), and every problem is a 400 that names the field as the API user knows it.
 */

/** The most a JSON request body may hold. Job specs are far smaller (see protocol/job.ts SPEC_LIMITS). */
export const MAX_JSON_BODY = 1 << 20;

/** Called as a body's bytes arrive, so the server can count the client as active (see master/index.ts). */
export type OnChunk = () => void;

const tooLarge = (max: number) =>
  new AppError(
    "BODY_TOO_LARGE",
    `the request body is larger than ${max} bytes, the most this endpoint takes`,
    { status: 413 },
  );

/**
 * Throws 413 BODY_TOO_LARGE when `req` declares a body longer than `max`; 400 for a Content-Length that is
 * not a byte count (the runtime refuses most of those before a handler runs).
 */
export function checkDeclaredLength(req: Request, max: number): void {
  const declared = req.headers.get("content-length");
  if (declared === null) return;
  if (!/^\d{1,15}$/.test(declared.trim())) throw badRequest("Content-Length must be a byte count");
  if (Number(declared) > max) throw tooLarge(max);
}

/** Reads the whole body of `req`, refusing it with 413 BODY_TOO_LARGE once it passes `max` bytes. */
export async function readLimited(req: Request, max: number, onChunk?: OnChunk): Promise<Uint8Array> {
  checkDeclaredLength(req, max);
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      onChunk?.();
      size += value.length;
      if (size > max) {
        await reader.cancel().catch(() => {});
        throw tooLarge(max);
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof AppError) throw err;
    // The client went away or sent a malformed body (a short body, a broken chunk).
    throw new AppError("BODY_INCOMPLETE", "the request body ended early or was malformed", {
      status: 400,
      cause: err,
    });
  }
  return Buffer.concat(chunks);
}

const valueAt = (input: unknown, path: readonly PropertyKey[]) => {
  let v: unknown = input;
  for (const p of path) v = v && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[p] : undefined;
  return v;
};

/** Describes the first problem zod found in `input`, naming the field by its path (`command[2]`, `env.HOME`). */
export function describeIssue(issue: z.core.$ZodIssue, input: unknown): string {
  const field = issue.path.reduce<string>(
    (s, p) => (typeof p === "number" ? `${s}[${p}]` : s ? `${s}.${String(p)}` : String(p)),
    "",
  );
  const at = field ? `${field} ` : "";
  switch (issue.code) {
    case "invalid_type": {
      const v = valueAt(input, issue.path);
      if (v === undefined && field) return `${field} is required`;
      const got = v === null ? "null" : Array.isArray(v) ? "an array" : typeof v;
      return `${at || "the body "}must be ${issue.expected === "object" ? "a JSON object" : issue.expected === "array" ? "an array" : `a ${issue.expected}`}, not ${got}`;
    }
    case "unrecognized_keys":
      return `unknown field${issue.keys.length > 1 ? "s" : ""} ${issue.keys
        .slice(0, 5)
        .map((k) => JSON.stringify(k.slice(0, 100)))
        .join(", ")}${field ? ` in ${field}` : ""}`;
    case "custom": {
      // A name rule's refusal shows the value, escaped, as checkName does for names in paths.
      const v = valueAt(input, issue.path);
      if ((issue as { params?: { code?: string } }).params?.code === "INVALID_NAME" && typeof v === "string")
        return `${at}${JSON.stringify(v.slice(0, 100))} is not a valid name: ${issue.message}`;
      return field ? `${field}: ${issue.message}` : issue.message;
    }
    default:
      return field ? `${field}: ${issue.message}` : issue.message;
  }
}

/**
 * Reads `req`'s body (at most `max` bytes) as strict UTF-8 JSON and checks it with `schema`. Throws 413
 * past the limit, 400 BAD_REQUEST for a body that is not UTF-8 or not JSON, 400 INVALID_REQUEST naming
 * the first field the schema refuses.
 */
export async function readJson<T extends z.ZodType>(
  req: Request,
  schema: T,
  opts: { max?: number; onChunk?: OnChunk } = {},
): Promise<z.infer<T>> {
  const bytes = await readLimited(req, opts.max ?? MAX_JSON_BODY, opts.onChunk);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw badRequest("the request body is not valid UTF-8: send JSON text in UTF-8");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw badRequest(
      text.trim() === "" ? "the request body is empty: send a JSON object" : "the request body must be JSON",
    );
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    // A name rule (lib/names.ts) marks its refusals, so a bad name is INVALID_NAME wherever it is.
    const message = describeIssue(issue, raw);
    if ((issue as { params?: { code?: string } }).params?.code === "INVALID_NAME")
      throw badRequest(message, "INVALID_NAME");
    throw badRequest(message, "INVALID_REQUEST");
  }
  return parsed.data;
}

import { AppError } from "./errors.ts";

/*
 * Request bodies are bounded before they are read: a client that sends more than a route takes gets a 413
 * and costs the server at most the limit, whether it declared its length or streams chunks.
 */

/** The most a JSON request body may hold. Job specs are far smaller (see protocol/limits.ts). */
export const MAX_JSON_BODY = 1 << 20;

const tooLarge = (max: number) =>
  new AppError(
    "BODY_TOO_LARGE",
    `the request body is larger than ${max} bytes, the most this endpoint takes`,
    { status: 413 },
  );

/** Reads the whole body of `req`, refusing it with 413 BODY_TOO_LARGE once it passes `max` bytes. */
export async function readLimited(req: Request, max: number): Promise<Uint8Array> {
  const declared = req.headers.get("content-length");
  if (declared !== null && Number(declared) > max) throw tooLarge(max);
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
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

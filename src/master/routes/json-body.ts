import type { Context } from "hono";
import type { z } from "zod";
import { readJson } from "../../lib/body.ts";
import { rearmOf } from "../idle.ts";

/**
 * The JSON body of `c`'s request checked by `schema` (lib/body.ts readJson: at most `max` bytes, 1 MiB
 * unless given; 413 past it, 400 naming the field), the connection counted as active as bytes arrive.
 */
export const jsonBody = <T extends z.ZodType>(c: Context, schema: T, max?: number): Promise<z.infer<T>> =>
  readJson(c.req.raw, schema, { max, onChunk: rearmOf(c) });

import { defineCommand } from "citty";
import { parseDuration } from "../lib/duration.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { checkFlags, clientArgs, clientOf, intArg, print, table } from "./common.ts";

/** An audit entry as GET /api/v1/audit gives it. */
interface Entry {
  id: number;
  at: string;
  tokenId: string;
  tokenName: string;
  role: string;
  action: string;
  target: string;
  detail: Record<string, unknown> | null;
}

const auditArgs = {
  ...clientArgs,
  since: {
    type: "string",
    description: "Only entries from this long ago (1h, 7d) or since this time (ISO 8601)",
    valueHint: "DURATION|TIME",
  },
  limit: {
    type: "string",
    description: "At most this many entries, newest first (default 50)",
    valueHint: "N",
  },
} as const;

/** `--since`: a duration back from now, or a time; as epoch milliseconds. */
function sinceOf(text: string): number {
  if (/^\d+(\.\d+)?(ms|s|m|h|d)/.test(text)) {
    try {
      return Date.now() - parseDuration(text);
    } catch (err) {
      throw new AppError("USAGE", `--since ${text}: ${coerceError(err).message}`);
    }
  }
  const at = Date.parse(text);
  if (Number.isNaN(at))
    throw new AppError("USAGE", `--since ${text}: use a duration (30m, 1d) or a time (2030-01-02T03:04:05Z)`);
  return at;
}

/** `kiln audit`: who changed what, newest first, for admins. */
export const audit = defineCommand({
  meta: { name: "audit", description: "Show the audit log: who changed what, newest first (admin)" },
  args: auditArgs,
  async run(ctx) {
    checkFlags(ctx, auditArgs);
    const limit = intArg("limit", ctx.args.limit) ?? 50;
    if (limit < 1) throw new AppError("USAGE", `--limit ${limit}: must be at least 1`);
    const since = ctx.args.since === undefined ? undefined : sinceOf(ctx.args.since);
    const client = clientOf(ctx.args);
    // Pages of at most 1000 follow the cursor the master gives, so --limit can be any size.
    const entries: Entry[] = [];
    let before: number | null = null;
    while (entries.length < limit) {
      const q = new URLSearchParams({ limit: String(Math.min(1000, limit - entries.length)) });
      if (before !== null) q.set("before", String(before));
      if (since !== undefined) q.set("since", String(since));
      const page = await client.request<{ entries: Entry[]; next: number | null }>(
        "GET",
        `/api/v1/audit?${q}`,
      );
      entries.push(...page.entries);
      if (page.next === null) break;
      before = page.next;
    }
    print(ctx.args.json, entries, () =>
      entries.length === 0
        ? "no audit entries"
        : table(
            ["ID", "TIME", "WHO", "ACTION", "TARGET", "DETAIL"],
            entries.map((e) => [
              e.id,
              e.at,
              `${e.tokenName} (${e.role}, ${e.tokenId})`,
              e.action,
              e.target,
              e.detail ? JSON.stringify(e.detail) : null,
            ]),
          ),
    );
  },
});

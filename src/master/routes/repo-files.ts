import { statSync } from "node:fs";
import { Hono } from "hono";
import { AppError, badRequest } from "../../lib/errors.ts";
import type { RepoRow } from "../../store/schema.ts";
import { findToken, type Role } from "../../store/tokens.ts";
import type { MasterContext } from "../context.ts";
import { mayRead, visibleRepo } from "../repo-access.ts";
import { resolveServed, servedParts } from "../repo-snapshots.ts";
import { parseRange } from "./range.ts";

const CONTENT_TYPES: [RegExp, string][] = [
  [/\.deb$/, "application/vnd.debian.binary-package"],
  [/\.rpm$/, "application/x-rpm"],
  [/\.(gz)$/, "application/gzip"],
  [/\.(xz)$/, "application/x-xz"],
  [/\.(zst)$/, "application/zstd"],
  [/\.xml$/, "application/xml"],
  [/\.(asc|gpg)$|(^|\/)(InRelease|Release|Packages)$/, "text/plain; charset=utf-8"],
];

const RANK: Partial<Record<Role, number>> = { viewer: 1, submitter: 2, operator: 3, admin: 4 };

/** The token a request to /repos/ carries: `Authorization: Bearer TOKEN`, or Basic with the token as password (apt's auth.conf, dnf's password=). */
function tokenOf(header: string | undefined): string | null {
  if (!header) return null;
  const bearer = /^Bearer\s+(\S+)$/i.exec(header);
  if (bearer) return bearer[1] as string;
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header);
  if (!basic) return null;
  const text = Buffer.from(basic[1] as string, "base64").toString("utf8");
  const colon = text.indexOf(":");
  return colon >= 0 ? text.slice(colon + 1) : null;
}

/**
 * The repositories' files, at /repos/NAME/...: a public repository for anyone, another for a token that
 * may read it (its project's viewers and up). Only plain path parts are served, from the repository's
 * current snapshot (or, for content a newer snapshot no longer holds, the one before it during the grace
 * period); whole, or one byte range, with HEAD and If-Modified-Since.
 */
export function repoFileRoutes(ctx: MasterContext) {
  const app = new Hono();
  const serve = async (req: Request, nameText: string, rest: string) => {
    const unreadable = () =>
      new AppError("NOT_FOUND", `no repository ${nameText} here (or it needs a token that may read it)`, {
        status: 404,
      });
    let repo: RepoRow;
    try {
      repo = await visibleRepo(ctx, nameText, null);
    } catch {
      throw unreadable();
    }
    if (!repo.public) {
      const secret = tokenOf(req.headers.get("authorization") ?? undefined);
      const token = secret ? await findToken(ctx.store.db, secret) : undefined;
      if (!token) {
        return Response.json(
          {
            error: {
              code: "UNAUTHENTICATED",
              message: `repository ${repo.name} is not public: send a viewer token (Bearer, or Basic with the token as password)`,
            },
          },
          { status: 401, headers: { "www-authenticate": `Basic realm="kiln repository ${repo.name}"` } },
        );
      }
      if (!(RANK[token.role as Role] ?? 0) || !mayRead(token.project, repo)) throw unreadable();
    }
    if (rest === "") {
      return new Response(
        `Kiln ${repo.format} repository ${repo.name}: its key is key.asc; \`kiln repo show ${repo.name}\` prints how to use it.\n`,
        { headers: { "content-type": "text/plain; charset=utf-8" } },
      );
    }
    let parts: string[] | null;
    try {
      parts = servedParts(rest)?.map((p) => decodeURIComponent(p)) ?? null;
    } catch {
      parts = null;
    }
    if (!parts || parts.some((p) => p.includes("/") || servedParts(p) === null))
      throw badRequest(`${JSON.stringify(rest)} is not a path in a repository`, "INVALID_PATH");
    const file = resolveServed(ctx.dataDir, repo.name, parts);
    if (!file)
      throw new AppError("NOT_FOUND", `repository ${repo.name} has no ${parts.join("/")}`, { status: 404 });
    const st = statSync(file);
    const lastModified = new Date(Math.floor(st.mtimeMs / 1000) * 1000);
    const headers: Record<string, string> = {
      "content-type":
        CONTENT_TYPES.find(([re]) => re.test(parts.join("/")))?.[1] ?? "application/octet-stream",
      "accept-ranges": "bytes",
      "last-modified": lastModified.toUTCString(),
      // Indexes change with every publish; clients revalidate (If-Modified-Since) rather than guess.
      "cache-control": "no-cache",
    };
    const since = req.headers.get("if-modified-since");
    if (since && !Number.isNaN(Date.parse(since)) && lastModified.getTime() <= Date.parse(since))
      return new Response(null, { status: 304, headers });
    const range = parseRange(req.headers.get("range") ?? undefined, st.size);
    if (range === "unsatisfiable")
      return new Response(null, {
        status: 416,
        headers: { ...headers, "content-range": `bytes */${st.size}` },
      });
    if (!range)
      return new Response(Bun.file(file), { headers: { ...headers, "content-length": String(st.size) } });
    return new Response(Bun.file(file).slice(range.start, range.end + 1), {
      status: 206,
      headers: {
        ...headers,
        "content-length": String(range.end - range.start + 1),
        "content-range": `bytes ${range.start}-${range.end}/${st.size}`,
      },
    });
  };
  app.get("/repos/:name", (c) => c.redirect(`/repos/${encodeURIComponent(c.req.param("name"))}/`, 301));
  app.get("/repos/:name/*", (c) => {
    // The path as sent, still encoded: each part is decoded on its own, so an encoded "/" stays inside it.
    const path = new URL(c.req.url).pathname;
    return serve(c.req.raw, c.req.param("name"), path.slice(path.indexOf("/", "/repos/".length) + 1));
  });
  return app;
}

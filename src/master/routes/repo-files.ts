import { statSync } from "node:fs";
import { Hono } from "hono";
import { AppError, badRequest } from "../../lib/errors.ts";
import type { RepoRow } from "../../store/schema.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import type { MasterContext } from "../context.ts";
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

/**
 * The repositories' files, at /repos/NAME/...: a public repository for anyone, another for a token that
 * may read it (its project's viewers and up). Only plain path parts are served, from the repository's
 * current snapshot (or, for content a newer snapshot no longer holds, the one before it during the grace
 * period); whole, or one byte range, with HEAD and If-Modified-Since.
 */
export function repoFileRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  // Who may read is the guard's to say (src/master/access.ts): public, or a token that may read it.
  const reader = guard({ who: "repo-reader" });
  const serve = async (req: Request, repo: RepoRow, rest: string) => {
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
  app.get("/repos/:name", guard({ who: "anyone" }), (c) =>
    c.redirect(`/repos/${encodeURIComponent(c.req.param("name"))}/`, 301),
  );
  app.get("/repos/:name/*", reader, (c) => {
    // The path as sent, still encoded: each part is decoded on its own, so an encoded "/" stays inside it.
    const path = new URL(c.req.url).pathname;
    return serve(c.req.raw, c.var.repo, path.slice(path.indexOf("/", "/repos/".length) + 1));
  });
  return app;
}

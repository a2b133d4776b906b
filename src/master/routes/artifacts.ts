import type { Context } from "hono";
import { Hono } from "hono";
import { AppError, badRequest } from "../../lib/errors.ts";
import { checkArtifactName } from "../../lib/names.ts";
import { formatSize } from "../../lib/size.ts";
import { getArtifact, listArtifacts } from "../../store/artifacts.ts";
import { getJob } from "../../store/jobs.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { artifactView, type UploadClaim } from "../artifacts.ts";
import type { MasterContext } from "../context.ts";
import { receiving } from "../idle.ts";
import { parseRange } from "./range.ts";

const idOf = (text: string) => {
  if (!/^\d{1,15}$/.test(text)) throw badRequest(`"${text}" is not a job id`, "INVALID_JOB_ID");
  return Number(text);
};
// Names may be `dir/file`: each part is checked on its own, so none is empty, "." or "..".
const nameOf = checkArtifactName;
const sizeOf = (text: string | undefined, what: string) => {
  if (text === undefined || !/^\d{1,15}$/.test(text)) throw badRequest(`${what} must be a byte count`);
  return Number(text);
};

/**
 * Artifacts: workers upload a job's files in resumable chunks, each request carrying that job's own
 * credential; people (and workers building tarball templates) list and read them, whole or by range.
 */
export function artifactRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  const upload = guard({ who: "job" });
  const reader = guard({ who: "client", role: "viewer", scope: "job", workers: true });

  /** The upload a worker's request is about; only the attempt that runs (or just ended) may add files. */
  const claimOf = async (c: Context<ApiEnv>): Promise<UploadClaim> => {
    const id = idOf(c.req.param("id") ?? "");
    const attempt = idOf(c.req.param("attempt") ?? "");
    const name = nameOf(c.req.param("name") ?? "");
    const sha256 = c.req.header("x-kiln-sha256") ?? c.req.query("sha256") ?? "";
    if (!/^[0-9a-f]{64}$/.test(sha256)) throw badRequest("x-kiln-sha256 must be the file's sha256 in hex");
    const size = sizeOf(c.req.header("x-kiln-size") ?? c.req.query("size"), "x-kiln-size");
    const modeText = c.req.header("x-kiln-mode") ?? "644";
    if (!/^[0-7]{1,4}$/.test(modeText)) throw badRequest("x-kiln-mode must be octal permission bits");
    const max = ctx.cfg.master.artifact_max ?? 64 * 2 ** 30;
    if (size > max)
      throw new AppError(
        "TOO_LARGE",
        `artifact ${name} has ${formatSize(size)}, more than this master takes (master.artifact_max, ${formatSize(max)})`,
        { status: 413 },
      );
    const job = await getJob(ctx.store.db, id);
    // The credential is the current attempt's (the guard saw to that); a request for another attempt
    // of the same job is one the worker sends late.
    if (
      !job ||
      job.attempt !== attempt ||
      c.var.caller.job?.attempt !== attempt ||
      !["assigned", "running"].includes(job.state)
    ) {
      throw new AppError("JOB_NOT_ACTIVE", `job ${id} attempt ${attempt} is not running`, { status: 409 });
    }
    // A worker known by its certificate adds files only to its own attempts (a token may be shared).
    const caller = c.get("caller");
    if (caller.tokenId.startsWith("cert:") && job.worker !== caller.name)
      throw new AppError("FORBIDDEN", `job ${id} attempt ${attempt} does not run on worker ${caller.name}`, {
        status: 403,
      });
    // Only permission bits: set-id bits from a job's file are not for whoever downloads it.
    return { jobId: id, attempt, name, sha256, size, mode: Number.parseInt(modeText, 8) & 0o777 };
  };

  // `{.+}`: a `dir/file` name matches whether its "/" arrives as such or encoded as %2F.
  app.get("/worker/artifacts/:id/:attempt/:name{.+}", upload, async (c) => {
    const claim = await claimOf(c);
    return c.json({ offset: await ctx.artifacts.offset(claim) });
  });

  app.put("/worker/artifacts/:id/:attempt/:name{.+}", upload, async (c) => {
    const claim = await claimOf(c);
    const offset = sizeOf(c.req.header("x-kiln-offset") ?? "0", "x-kiln-offset");
    const got = await receiving(c, c.req.raw.body, (body) => ctx.artifacts.receive(claim, offset, body));
    if ("offset" in got) return c.json({ offset: got.offset }, 202);
    return c.json(artifactView(got.artifact), 201);
  });

  app.get("/jobs/:id/artifacts", reader, async (c) => {
    const job = c.var.job;
    return c.json((await listArtifacts(ctx.store.db, job.id)).map(artifactView));
  });

  app.get("/jobs/:id/artifacts/:name{.+}", reader, async (c) => {
    const job = c.var.job;
    const name = nameOf(c.req.param("name"));
    const row = await getArtifact(ctx.store.db, job.id, name);
    if (!row)
      throw new AppError(
        "ARTIFACT_NOT_FOUND",
        `job ${job.id} has no artifact ${name}: see \`kiln artifacts ${job.id}\``,
        { status: 404 },
      );
    const etag = `"${row.sha256}"`;
    const headers: Record<string, string> = {
      "content-type": "application/octet-stream",
      "accept-ranges": "bytes",
      etag,
      "x-kiln-sha256": row.sha256,
      "x-kiln-size": String(row.size),
      "x-kiln-mode": row.mode.toString(8),
      "x-kiln-kind": row.kind,
      // The last part only: a browser saves one file, and the name's characters need no quoting.
      "content-disposition": `attachment; filename="${row.name.split("/").pop()}"`,
    };
    // If-Range (RFC 9110, 13.1.5): a range of a different version would corrupt the client's file, so a
    // validator that does not match gets the whole artifact.
    const ifRange = c.req.header("if-range");
    const range =
      ifRange === undefined || ifRange === etag ? parseRange(c.req.header("range"), row.size) : null;
    if (range === "unsatisfiable") {
      return c.json(
        {
          error: {
            code: "RANGE_NOT_SATISFIABLE",
            message: `artifact ${name} has ${row.size} bytes; the range asked for is outside them`,
          },
        },
        416,
        { "content-range": `bytes */${row.size}` },
      );
    }
    const body = await ctx.artifacts.open(row, range ?? undefined);
    if (!body) {
      ctx.log.error(
        `artifact ${name} of job ${job.id}: blob ${row.sha256} is missing from the ${row.store} store`,
      );
      throw new AppError(
        "ARTIFACT_MISSING",
        `the stored content of artifact ${name} is missing on the master; the master's log says where it was kept`,
        { status: 404 },
      );
    }
    if (!range) return new Response(body, { headers: { ...headers, "content-length": String(row.size) } });
    return new Response(body, {
      status: 206,
      headers: {
        ...headers,
        "content-length": String(range.end - range.start + 1),
        "content-range": `bytes ${range.start}-${range.end}/${row.size}`,
      },
    });
  });

  return app;
}

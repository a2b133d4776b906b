import { Hono } from "hono";
import { AppError, badRequest, notFound } from "../../lib/errors.ts";
import { artifactNameProblem } from "../../protocol/artifact-name.ts";
import { getArtifact, listArtifacts, putArtifact } from "../../store/artifacts.ts";
import { getJob } from "../../store/jobs.ts";
import { artifactPath, storeArtifact } from "../artifacts.ts";
import type { Caller } from "../auth.ts";
import { requireRole } from "../auth.ts";
import type { MasterContext } from "../context.ts";

type Env = { Variables: { caller: Caller } };

const idOf = (text: string) => {
  if (!/^\d{1,15}$/.test(text)) throw badRequest(`"${text}" is not a job id`, "INVALID_JOB_ID");
  return Number(text);
};
// Names may be `dir/file`: each part is checked on its own, so none is empty, "." or "..".
const nameOf = (text: string) => {
  const problem = artifactNameProblem(text);
  if (problem)
    throw badRequest(`${JSON.stringify(text)} is not an artifact name: ${problem}`, "INVALID_NAME");
  return text;
};

/** Artifacts: workers upload a job's files; people (and workers building tarball templates) read them. */
export function artifactRoutes(ctx: MasterContext) {
  const app = new Hono<Env>();

  // `{.+}`: a `dir/file` name matches whether its "/" arrives as such or encoded as %2F.
  app.put("/worker/artifacts/:id/:attempt/:name{.+}", async (c) => {
    requireRole(c, "worker");
    const id = idOf(c.req.param("id"));
    const attempt = idOf(c.req.param("attempt"));
    const name = nameOf(c.req.param("name"));
    const job = await getJob(ctx.store.db, id);
    // Only the attempt that is running (or just ended and is being delivered) may add artifacts.
    if (!job || job.attempt !== attempt || !["assigned", "running"].includes(job.state)) {
      throw new AppError("JOB_NOT_ACTIVE", `job ${id} attempt ${attempt} is not running`, { status: 409 });
    }
    if (!c.req.raw.body) throw badRequest("an artifact upload needs a body");
    const claimed = c.req.header("x-kiln-sha256") ?? null;
    if (claimed !== null && !/^[0-9a-f]{64}$/.test(claimed))
      throw badRequest("x-kiln-sha256 must be a sha256 in hex");
    const stored = await storeArtifact(ctx.dataDir, c.req.raw.body, claimed);
    await putArtifact(ctx.store, { jobId: id, name, attempt, ...stored });
    return c.json({ name, ...stored }, 201);
  });

  const readable = async (c: Parameters<typeof requireRole>[0], idText: string) => {
    const caller = c.get("caller");
    if (caller.role !== "worker") requireRole(c, "viewer");
    const job = await getJob(ctx.store.db, idOf(idText));
    if (!job || (caller.project && job.project !== caller.project)) throw notFound("job", idText);
    return job;
  };

  app.get("/jobs/:id/artifacts", async (c) => {
    const job = await readable(c, c.req.param("id"));
    const rows = await listArtifacts(ctx.store.db, job.id);
    return c.json(rows.map((r) => ({ name: r.name, size: r.size, sha256: r.sha256 })));
  });

  app.get("/jobs/:id/artifacts/:name{.+}", async (c) => {
    const job = await readable(c, c.req.param("id"));
    const name = nameOf(c.req.param("name"));
    const row = await getArtifact(ctx.store.db, job.id, name);
    if (!row)
      throw new AppError(
        "ARTIFACT_NOT_FOUND",
        `job ${job.id} has no artifact ${name}: see \`kiln artifacts ${job.id}\``,
        { status: 404 },
      );
    return new Response(Bun.file(artifactPath(ctx.dataDir, row.sha256)), {
      headers: {
        "content-type": "application/octet-stream",
        "content-length": String(row.size),
        "x-kiln-sha256": row.sha256,
        // The last part only: a browser saves one file, and the name's characters need no quoting.
        "content-disposition": `attachment; filename="${row.name.split("/").pop()}"`,
      },
    });
  });

  return app;
}

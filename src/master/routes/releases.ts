import { existsSync } from "node:fs";
import { join } from "node:path";
import { Hono } from "hono";
import { AppError, notFound } from "../../lib/errors.ts";
import { checkReleaseArtifact } from "../../lib/names.ts";
import { ReleasesApi } from "../../protocol/api.ts";
import { getArtifact } from "../../store/artifacts.ts";
import { getJob } from "../../store/jobs.ts";
import { getRelease, listReleases } from "../../store/releases.ts";
import type { ReleaseRow } from "../../store/schema.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { audit } from "../audit.ts";
import type { MasterContext } from "../context.ts";
import { whileWorking } from "../idle.ts";
import { checkTag, promote, releaseDir } from "../releases.ts";
import { jsonBody } from "./json-body.ts";

/** A release as the API shows it: what it is, where it came from, and where to fetch it. */
export const releaseView = (r: ReleaseRow) => ({
  tag: r.tag,
  job: r.jobId,
  artifact: r.artifact,
  file: r.file,
  size: r.size,
  sha256: r.sha256,
  project: r.project,
  createdAt: r.createdAt,
  createdBy: r.createdBy,
  url: `/releases/${r.tag}/${encodeURIComponent(r.file)}`,
});

/** The release API: promote a succeeded job's artifact under a new tag, list and show releases. */
export function releaseRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);

  app.post("/releases", guard({ who: "client", role: "submitter", scope: "body-job" }), async (c) => {
    const req = await jsonBody(c, ReleasesApi.promote);
    const tag = req.tag;
    checkReleaseArtifact(req.artifact);
    const caller = c.var.caller;
    const job = await getJob(ctx.store.db, req.job);
    if (!job || (caller.project && job.project !== caller.project)) throw notFound("job", String(req.job));
    if (job.state !== "succeeded") {
      throw new AppError(
        "JOB_NOT_SUCCEEDED",
        `job ${job.id} is ${job.state}: only a succeeded job's artifacts can become a release`,
        { status: 409 },
      );
    }
    const artifact = await getArtifact(ctx.store.db, job.id, req.artifact);
    if (!artifact) {
      throw new AppError(
        "ARTIFACT_NOT_FOUND",
        `job ${job.id} has no artifact ${req.artifact}: see \`kiln artifacts ${job.id}\``,
        { status: 404 },
      );
    }
    // Copying a large image out of the blob store takes a while: the client waits on us, not idle.
    const row = await whileWorking(c, () => promote(ctx, job, artifact, tag, caller.name));
    await audit(ctx, caller, "release.promote", `release/${row.tag}`, {
      job: job.id,
      artifact: row.artifact,
      sha256: row.sha256,
      project: row.project,
    });
    return c.json(releaseView(row), 201);
  });

  app.get("/releases", guard({ who: "client", role: "viewer", scope: "list" }), async (c) => {
    const rows = await listReleases(ctx.store.db, { project: c.var.caller.project });
    return c.json(rows.map(releaseView));
  });

  app.get("/releases/:tag", guard({ who: "client", role: "viewer", scope: "release" }), async (c) => {
    return c.json(releaseView(c.var.release));
  });

  return app;
}

/**
 * The released files themselves, for anyone who can reach the master (like a repository): `/releases/TAG/`
 * lists a release, `/releases/TAG/FILE` and `/releases/TAG/SHA256SUMS` fetch it.
 */
export function releaseFileRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const anyone = guardFor(ctx)({ who: "anyone" });
  const load = async (tagText: string) => {
    const row = await getRelease(ctx.store.db, checkTag(tagText));
    if (!row) throw notFound("release", tagText);
    return row;
  };
  app.get("/releases/:tag/", anyone, async (c) => {
    const row = await load(c.req.param("tag"));
    return c.text(`${row.file}\nSHA256SUMS\n`);
  });
  app.get("/releases/:tag/:file", anyone, async (c) => {
    const row = await load(c.req.param("tag"));
    const file = c.req.param("file");
    // Only the two names a release holds: nothing from the request is joined into a path unchecked.
    if (file !== row.file && file !== "SHA256SUMS") {
      throw new AppError("NOT_FOUND", `release ${row.tag} has ${row.file} and SHA256SUMS, not ${file}`, {
        status: 404,
      });
    }
    const path = join(releaseDir(ctx.dataDir, row.tag), file);
    if (!existsSync(path)) {
      ctx.log.error(`release ${row.tag}: ${path} is missing from the data dir; restore it from a backup`);
      throw new AppError(
        "RELEASE_MISSING",
        `release ${row.tag}'s files are missing: the master's log says more`,
        {
          status: 410,
        },
      );
    }
    const headers: Record<string, string> = { "content-type": "application/octet-stream" };
    if (file === row.file) headers["x-kiln-sha256"] = row.sha256;
    else headers["content-type"] = "text/plain; charset=utf-8";
    return new Response(Bun.file(path), { headers });
  });
  return app;
}

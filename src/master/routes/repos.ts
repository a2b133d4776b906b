import { Hono } from "hono";
import { z } from "zod";
import { readLimited } from "../../lib/body.ts";
import { AppError, badRequest, notFound } from "../../lib/errors.ts";
import { checkName } from "../../lib/names.ts";
import { debSourcesLine } from "../../repo/deb.ts";
import { defaultArchs, packageFormat } from "../../repo/formats.ts";
import { rpmRepoFile } from "../../repo/rpm.ts";
import { getJob } from "../../store/jobs.ts";
import {
  deleteRepo,
  insertRepo,
  listRepoPackages,
  listRepos,
  packagesNamed,
  setRepoKey,
} from "../../store/repos.ts";
import type { RepoPackageRow, RepoRow } from "../../store/schema.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { audit } from "../audit.ts";
import { requireProject } from "../auth.ts";
import type { MasterContext } from "../context.ts";
import { mayPublish, visibleRepo } from "../repo-access.ts";
import type { PublishResult } from "../repos.ts";
import { jsonBody } from "./json-body.ts";

// A Debian architecture, or an RPM one (x86_64, noarch, src).
const ARCH = /^[a-z0-9][a-z0-9_-]{0,31}$/i;

const ADD = z
  .object({
    name: z.string().max(1024),
    format: z.string().max(16),
    dist: z.string().max(1024).optional(),
    component: z.string().max(1024).optional(),
    archs: z.array(z.string().max(64)).min(1).max(16).optional(),
    keep: z.number().int().min(1, "must be at least 1").max(1000, "must be at most 1000").optional(),
    project: z.string().max(1024).optional(),
    public: z.boolean().optional(),
  })
  .strict();

const PUBLISH = z
  .object({
    job: z.number().int().positive(),
    artifacts: z.array(z.string().min(1).max(1024)).max(1000).optional(),
    force: z.boolean().optional(),
  })
  .strict();

// An armoured secret key is a few KiB; RSA 4096 with subkeys stays far below this.
const MAX_KEY = 1 << 20;

/** A repository as the API shows it; `url` is its path on the master, `key` where its public key is. */
export const repoView = (r: RepoRow, packages?: number) => ({
  name: r.name,
  format: r.format,
  project: r.project,
  public: r.public,
  dist: r.dist,
  component: r.component,
  archs: r.archs,
  keep: r.keep,
  generation: r.generation,
  key: r.keyFingerprint ? "imported" : "master",
  keyFingerprint: r.keyFingerprint,
  createdAt: r.createdAt,
  createdBy: r.createdBy,
  publishedAt: r.publishedAt,
  url: `/repos/${r.name}/`,
  keyUrl: `/repos/${r.name}/key.asc`,
  ...(packages === undefined ? {} : { packages }),
});

/** A stored package as the API shows it. */
export const packageView = (p: RepoPackageRow) => ({
  name: p.name,
  version: p.version,
  arch: p.arch,
  source: p.source,
  size: p.size,
  sha256: p.sha256,
  path: p.path,
  job: p.jobId,
  publishedAt: p.publishedAt,
  publishedBy: p.publishedBy,
});

/** A publish as the API shows it. */
export const publishView = (r: PublishResult) => ({
  repo: r.repo,
  generation: r.generation,
  added: r.added.map(({ name, version, arch, path }) => ({ name, version, arch, path })),
  unchanged: r.unchanged.map(({ name, version, arch, path }) => ({ name, version, arch, path })),
  removed: r.removed,
});

/**
 * How a client uses repository `r` of the master at `url`: the sources.list line (deb) or the .repo file
 * (rpm), where its key is, and the commands that set a machine up, tokens left for the reader to fill.
 */
export function repoUsage(r: RepoRow, url: string) {
  const base = `${url}/repos/${r.name}`;
  const keyUrl = `${base}/key.asc`;
  const auth = r.public ? "" : " -u kiln:TOKEN";
  if (r.format === "deb") {
    const sourcesLine = debSourcesLine({
      name: r.name,
      url: base,
      dist: r.dist ?? "stable",
      component: r.component ?? "main",
    });
    // apt_auth.conf(5): a machine line matches plain http only when it names the scheme.
    const machine = url.startsWith("https://") ? url.slice("https://".length) : url;
    const steps = [
      `curl -fsSL${auth} ${keyUrl} -o /etc/apt/keyrings/${r.name}.asc   # or: kiln repo key ${r.name} > /etc/apt/keyrings/${r.name}.asc`,
      `echo '${sourcesLine}' > /etc/apt/sources.list.d/${r.name}.list`,
      ...(r.public
        ? []
        : [
            `echo 'machine ${machine}/repos/${r.name} login kiln password TOKEN' > /etc/apt/auth.conf.d/${r.name}.conf   # TOKEN: a viewer token of its project`,
          ]),
      "apt-get update",
    ];
    return { sourcesLine, keyUrl, steps };
  }
  const file = rpmRepoFile({ name: r.name, baseurl: `${base}/`, keyUrl });
  const repoFile = r.public ? file : `${file}username=kiln\npassword=TOKEN\n`;
  return {
    repoFile,
    keyUrl,
    steps: [
      `cat > /etc/yum.repos.d/${r.name}.repo <<'EOF'\n${repoFile}EOF`,
      `dnf makecache   # dnf fetches the key from ${keyUrl} and checks repomd.xml with it`,
    ],
  };
}

/** The newest version of package `pkg` among `rows` (any arch), by the format's own order. */
function newest(ctx: MasterContext, repo: RepoRow, rows: RepoPackageRow[]): RepoPackageRow | null {
  const format = ctx.repos.formats[repo.format as "deb" | "rpm"];
  return rows.reduce<RepoPackageRow | null>(
    (a, r) => (!a || format.compare(r.version, a.version) > 0 ? r : a),
    null,
  );
}

/**
 * The repository API: operators add and remove repositories and import keys; viewers list them, their
 * packages and keys; submitters publish a succeeded job's packages; workers ask, for a job, the newest
 * version of a package (`kiln job version`).
 */
export function repoRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  // A repository may belong to a project: one the token may not read is a 404, as if it did not exist.
  const reader = guard({ who: "client", role: "viewer", scope: "repo" });
  const operator = guard({ who: "client", role: "operator", scope: "repo" });

  /** Refuses a project-limited token a change to a repository that is not its project's own. */
  const ownRepo = (project: string | null, repo: { name: string; project: string | null }) => {
    if (project && repo.project !== project)
      throw new AppError("FORBIDDEN", `repository ${repo.name} is not of project ${project}`, {
        status: 403,
      });
  };

  app.get("/repos", guard({ who: "client", role: "viewer", scope: "list" }), async (c) => {
    const caller = c.var.caller;
    const rows = await listRepos(ctx.store.db, caller.project);
    return c.json(rows.map((r) => repoView(r)));
  });

  app.post("/repos", guard({ who: "client", role: "operator", scope: "body-project" }), async (c) => {
    const caller = c.var.caller;
    const req = await jsonBody(c, ADD);
    const name = checkName("repository", req.name);
    const format = packageFormat(req.format);
    const project = req.project === undefined ? caller.project : checkName("project", req.project);
    // A project-limited token makes repositories of its project only, never one every project shares.
    if (caller.project && project !== caller.project)
      throw new AppError("FORBIDDEN", `the token is limited to project ${caller.project}`, { status: 403 });
    if (format === "rpm" && (req.dist !== undefined || req.component !== undefined))
      throw badRequest("--dist and --component are for deb repositories; an rpm repository has neither");
    const archs = [...new Set(req.archs ?? defaultArchs(format))];
    for (const a of archs)
      if (!ARCH.test(a) || (format === "deb" && !/^[a-z0-9][a-z0-9-]*$/.test(a)))
        throw badRequest(`--arch ${a} is not a${format === "deb" ? " Debian" : "n RPM"} architecture name`);
    const row = {
      name,
      format,
      project,
      public: req.public ?? false,
      dist: format === "deb" ? checkName("dist", req.dist ?? "stable") : null,
      component: format === "deb" ? checkName("component", req.component ?? "main") : null,
      archs,
      keep: req.keep ?? 3,
      keyFingerprint: null,
      createdAt: Date.now(),
      createdBy: caller.name,
    };
    if (!(await insertRepo(ctx.store, row)))
      throw new AppError("REPO_EXISTS", `repository ${name} exists already: see \`kiln repo show ${name}\``, {
        status: 409,
      });
    const repo = await visibleRepo(ctx, name, null);
    try {
      await ctx.repos.create(name);
    } catch (err) {
      // A repository that cannot be served is not made: the row goes with its files.
      await deleteRepo(ctx.store, name);
      await ctx.repos.removeFiles(name);
      throw err;
    }
    ctx.log.info(
      `repository ${name} added (${format}, ${archs.join(",")}${project ? `, project ${project}` : ""}${row.public ? ", public" : ""}) by ${caller.name}`,
    );
    await audit(ctx, caller, "repo.add", `repo/${name}`, { format, project, public: row.public, archs });
    return c.json(repoView(repo, 0), 201);
  });

  app.get("/repos/:name", reader, async (c) => {
    const repo = c.var.repo;
    const packages = await listRepoPackages(ctx.store.db, repo.name);
    // The URL clients use: the configured one, else the one this request came in by.
    const base = (ctx.cfg.master?.url || new URL(c.req.url).origin).replace(/\/$/, "");
    return c.json({ ...repoView(repo, packages.length), usage: repoUsage(repo, base) });
  });

  app.delete("/repos/:name", operator, async (c) => {
    const caller = c.var.caller;
    const repo = c.var.repo;
    ownRepo(caller.project, repo);
    await deleteRepo(ctx.store, repo.name);
    await ctx.repos.removeFiles(repo.name);
    ctx.log.info(`repository ${repo.name} removed by ${caller.name}`);
    await audit(ctx, caller, "repo.rm", `repo/${repo.name}`);
    return c.json({ name: repo.name, removed: true });
  });

  app.get("/repos/:name/packages", reader, async (c) => {
    const repo = c.var.repo;
    const only = c.req.query("name");
    const rows = only
      ? await packagesNamed(ctx.store.db, repo.name, only)
      : await listRepoPackages(ctx.store.db, repo.name);
    return c.json(rows.map(packageView));
  });

  app.get("/repos/:name/key", reader, async (c) => {
    const repo = c.var.repo;
    const key = await ctx.repos.keys.signer(repo.keyFingerprint).publicKey();
    return c.text(key, 200, { "content-type": "application/pgp-keys" });
  });

  app.put("/repos/:name/key", operator, async (c) => {
    const caller = c.var.caller;
    const repo = c.var.repo;
    ownRepo(caller.project, repo);
    const key = await readLimited(c.req.raw, MAX_KEY);
    const { fingerprint, uid } = await ctx.repos.keys.importKey(key);
    await setRepoKey(ctx.store, repo.name, fingerprint);
    // Signed again with the new key at once: the next client sees metadata that verifies with it.
    await ctx.repos.refresh(repo.name);
    ctx.log.info(`repository ${repo.name}: signing key ${fingerprint} (${uid}) imported by ${caller.name}`);
    await audit(ctx, caller, "repo.key", `repo/${repo.name}`, { fingerprint });
    return c.json({ repo: repo.name, fingerprint, uid });
  });

  app.post("/repos/:name/publish", guard({ who: "client", role: "submitter", scope: "repo" }), async (c) => {
    const caller = c.var.caller;
    const repo = c.var.repo;
    const req = await jsonBody(c, PUBLISH);
    const job = await getJob(ctx.store.db, req.job);
    if (!job || (caller.project && job.project !== caller.project)) throw notFound("job", String(req.job));
    requireProject(caller, job.project);
    if (!mayPublish(job.project, repo))
      throw new AppError(
        "FORBIDDEN",
        `repository ${repo.name} belongs to project ${repo.project}: jobs of project ${job.project} cannot publish into it`,
        { status: 403 },
      );
    // A job whose own publish failed (reason publish) built its packages fine: they may go in now.
    if (job.state !== "succeeded" && !(job.state === "failed" && job.reason === "publish"))
      throw new AppError(
        "JOB_NOT_SUCCEEDED",
        `job ${job.id} is ${job.state}${job.reason ? ` (${job.reason})` : ""}: only a succeeded job's packages are published`,
        { status: 409 },
      );
    const result = await ctx.repos.publishJob(
      job,
      { by: caller.name, jobId: job.id, force: req.force ?? false },
      repo.name,
      req.artifacts,
    );
    if (!result)
      throw new AppError(
        "REPO_NO_PACKAGES",
        `job ${job.id} left no deb or rpm artifact to publish: see \`kiln artifacts ${job.id}\``,
        { status: 422 },
      );
    await audit(ctx, caller, "repo.publish", `repo/${repo.name}`, {
      job: job.id,
      generation: result.generation,
      added: result.added.length,
      removed: result.removed.length,
    });
    return c.json(publishView(result));
  });

  // `kiln job version PKG --repo R` inside a job, through its worker with the job's own credential: what
  // the job's project may read.
  app.get("/worker/jobs/:id/:attempt/repo-version", guard({ who: "job" }), async (c) => {
    const id = Number(c.req.param("id"));
    const attempt = Number(c.req.param("attempt"));
    const job = Number.isSafeInteger(id) ? await getJob(ctx.store.db, id) : undefined;
    if (
      !job ||
      job.attempt !== attempt ||
      c.var.caller.job?.attempt !== attempt ||
      !["assigned", "running"].includes(job.state)
    )
      throw new AppError("JOB_NOT_ACTIVE", `job ${c.req.param("id")} attempt ${attempt} is not running`, {
        status: 409,
      });
    const repo = await visibleRepo(ctx, c.req.query("repo") ?? "", job.project);
    const pkg = c.req.query("pkg") ?? "";
    if (!/^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$/.test(pkg))
      throw badRequest(`"${pkg}" is not a package name`);
    const top = newest(ctx, repo, await packagesNamed(ctx.store.db, repo.name, pkg));
    if (!top)
      throw new AppError("PACKAGE_NOT_FOUND", `repository ${repo.name} has no package ${pkg}`, {
        status: 404,
      });
    return c.json({ repo: repo.name, name: top.name, version: top.version, arch: top.arch });
  });

  return app;
}

import { AppError } from "../lib/errors.ts";
import { checkName } from "../lib/names.ts";
import type { RepoSource } from "../protocol/repo-sources.ts";
import { getRepo } from "../store/repos.ts";
import type { JobRow, RepoRow } from "../store/schema.ts";
import type { MasterContext } from "./context.ts";

/*
 * Who may do what with a repository. A repository of no project is everyone's. One of project A is read by
 * A's tokens (and unscoped ones) and, when it is public, by anyone who reaches the master, without a token;
 * only A's jobs publish into it, public or not: `--public` opens reading, never writing.
 */

/** Whether a caller limited to `project` (null: any project) may read `repo`. */
export const mayRead = (project: string | null, repo: RepoRow) =>
  !project || repo.project === null || repo.project === project || repo.public;

/** Whether jobs of `project` may publish into `repo`. */
export const mayPublish = (project: string, repo: RepoRow) =>
  repo.project === null || repo.project === project;

/**
 * Repository `name` as a caller limited to `project` sees it; a repository it may not read is "no such
 * repository", as one that does not exist (its name says nothing to other projects). `status` is the
 * refusal's: 404 for a lookup, 400 where the name is part of a request (submit --repo).
 */
export async function visibleRepo(
  ctx: Pick<MasterContext, "store">,
  nameText: string,
  project: string | null,
  status = 404,
): Promise<RepoRow> {
  const name = checkName("repository", nameText);
  const repo = await getRepo(ctx.store.db, name);
  if (!repo || !mayRead(project, repo)) {
    throw new AppError(
      "REPO_NOT_FOUND",
      `no repository ${name}: list them with \`kiln repo ls\`, add one with \`kiln repo add\``,
      { status },
    );
  }
  return repo;
}

/** Refuses, at submit, a --repo that jobs of `project` cannot publish into: missing (400) or another project's (403). */
export async function checkPublishable(ctx: Pick<MasterContext, "store">, name: string, project: string) {
  const repo = await visibleRepo(ctx, name, project, 400);
  if (!mayPublish(project, repo)) {
    throw new AppError(
      "FORBIDDEN",
      `repository ${name} belongs to project ${repo.project}: jobs of project ${project} cannot publish into it`,
      { status: 403 },
    );
  }
  return repo;
}

/**
 * The repositories `job` uses (`--use-repo`) as its worker needs them to write the job's sources: each one
 * that still exists and that the job's project may still read, with its public key. One removed (or made
 * unreadable) since the submit is left out; the job's setup then says so, and apt finds no such source.
 */
export async function repoSourcesOf(
  ctx: Pick<MasterContext, "store" | "repos">,
  job: Pick<JobRow, "project" | "useRepos">,
): Promise<RepoSource[]> {
  const out: RepoSource[] = [];
  for (const name of job.useRepos) {
    const repo = await getRepo(ctx.store.db, name);
    if (!repo || !mayRead(job.project, repo)) continue;
    out.push({
      name: repo.name,
      format: repo.format as RepoSource["format"],
      dist: repo.dist,
      component: repo.component,
      key: await ctx.repos.keys.signer(repo.keyFingerprint).publicKey(),
    });
  }
  return out;
}

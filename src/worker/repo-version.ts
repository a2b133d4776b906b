import { AppError, coerceError, errorFrom } from "../lib/errors.ts";

/** The newest version of a package in a repository, as the master answers `kiln job version`. */
export interface RepoVersion {
  repo: string;
  name: string;
  version: string;
  arch: string;
}

/**
 * Asks the master, for a running attempt, the newest version of package `pkg` in repository `repo`, with
 * the attempt's own credential; the master answers only from repositories the job's project may read.
 * Rejects with the master's AppError (PACKAGE_NOT_FOUND, REPO_NOT_FOUND...) or MASTER_UNREACHABLE.
 */
export function repoVersionAsker(master: string) {
  return async (
    jobId: number,
    attempt: number,
    token: string,
    repo: string,
    pkg: string,
  ): Promise<RepoVersion> => {
    const url = `${master.replace(/\/$/, "")}/api/v1/worker/jobs/${jobId}/${attempt}/repo-version?repo=${encodeURIComponent(repo)}&pkg=${encodeURIComponent(pkg)}`;
    let res: Response;
    try {
      res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    } catch (err) {
      throw new AppError("MASTER_UNREACHABLE", `cannot reach the master: ${coerceError(err).message}`, {
        status: 503,
        cause: err,
      });
    }
    if (!res.ok) throw await errorFrom(res);
    return (await res.json()) as RepoVersion;
  };
}

import { AppError, coerceError, errorFrom } from "../lib/errors.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";

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
export function repoVersionAsker(master: string, auth: MasterAuth) {
  return async (
    jobId: number,
    attempt: number,
    credential: string,
    repo: string,
    pkg: string,
  ): Promise<RepoVersion> => {
    const url = `${master.replace(/\/$/, "")}/api/v1/worker/jobs/${jobId}/${attempt}/repo-version?repo=${encodeURIComponent(repo)}&pkg=${encodeURIComponent(pkg)}`;
    let res: Response;
    try {
      // The worker's own connection (its certificate on a TLS master), the job's own credential.
      const headers = { ...(await auth.headers("GET", url)), authorization: `Bearer ${credential}` };
      res = await fetch(url, { headers, tls: auth.tls() });
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

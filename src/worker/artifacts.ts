import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { coerceError, errorFrom } from "../lib/errors.ts";
import { artifactNameProblem } from "../protocol/artifact-name.ts";

/*
 * Delivers a finished job's artifacts (the files in its out dir, those in subdirectories as `dir/file`) to
 * the master before the job is reported finished, so a job that is terminal always has its artifacts.
 * With the sandbox runner the out dir holds only what Kiln wrote there itself (collection and uploads);
 * links are never followed all the same, as the process runner's job writes it directly. Each file is hashed first and
 * the master checks the hash on arrival. A marker file records that delivery is done, so a worker
 * restarted with the job still in its outbox does not upload again.
 */

export class RetryLater extends Error {}

/** Regular files below `dir` as artifact names, in order; anything else is reported through `skipped`. */
function listFiles(dir: string, skipped: (name: string, why: string) => void, prefix = ""): string[] {
  if (!existsSync(dir)) return [];
  const names: string[] = [];
  const entries = readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const e of entries) {
    const name = `${prefix}${e.name}`;
    const problem = artifactNameProblem(name);
    if (problem) skipped(name, `its name is not allowed: ${problem}`);
    else if (e.isDirectory()) names.push(...listFiles(join(dir, e.name), skipped, `${name}/`));
    else if (e.isFile()) names.push(name);
    else skipped(name, "not a regular file");
  }
  return names;
}

async function sha256(path: string): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) h.update(chunk);
  return h.digest("hex");
}

/** Uploads every regular file below DIR/out; throws RetryLater when the master cannot be reached. */
export async function deliverArtifacts(o: {
  dir: string;
  jobId: number;
  attempt: number;
  master: string;
  token: string;
  log: ConsolaInstance;
}): Promise<void> {
  const done = join(o.dir, "artifacts-delivered");
  if (existsSync(done)) return;
  const out = join(o.dir, "out");
  const names = listFiles(out, (name, why) =>
    o.log.warn(`job ${o.jobId}: ${JSON.stringify(name)} in $KILN_OUT is not kept: ${why}`),
  );
  for (const name of names) {
    const path = join(out, name);
    const hash = await sha256(path);
    let res: Response;
    try {
      res = await fetch(
        `${o.master.replace(/\/$/, "")}/api/v1/worker/artifacts/${o.jobId}/${o.attempt}/${encodeURIComponent(name)}`,
        {
          method: "PUT",
          headers: { authorization: `Bearer ${o.token}`, "x-kiln-sha256": hash },
          body: Bun.file(path),
        },
      );
    } catch (err) {
      throw new RetryLater(`cannot reach the master to deliver artifacts: ${coerceError(err).message}`, {
        cause: err,
      });
    }
    if (res.status >= 500) throw new RetryLater(`the master answered ${res.status} to an artifact upload`);
    if (!res.ok) {
      // 4xx: this attempt is no longer the job's (re-queued or ended meanwhile), or the file is refused;
      // retrying would not change the answer.
      o.log.warn(`job ${o.jobId}: artifact ${name} refused: ${(await errorFrom(res)).message}`);
    }
  }
  writeFileSync(done, "");
}

import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { errorFrom } from "../lib/errors.ts";

/*
 * Delivers a finished job's artifacts (the files left in its out dir) to the master before the job is
 * reported finished, so a job that is terminal always has its artifacts. Each file is hashed first and
 * the master checks the hash on arrival. A marker file records that delivery is done, so a worker
 * restarted with the job still in its outbox does not upload again.
 */

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$/;

export class RetryLater extends Error {}

async function sha256(path: string): Promise<string> {
  const h = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) h.update(chunk);
  return h.digest("hex");
}

/** Uploads every regular top-level file of DIR/out; throws RetryLater when the master cannot be reached. */
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
  const entries = existsSync(out) ? readdirSync(out, { withFileTypes: true }) : [];
  for (const e of entries) {
    if (!e.isFile()) {
      o.log.warn(
        `job ${o.jobId}: ${e.name} in $KILN_OUT is not a regular file and is not kept (tar a directory first)`,
      );
      continue;
    }
    if (!NAME.test(e.name)) {
      o.log.warn(`job ${o.jobId}: artifact name ${JSON.stringify(e.name)} is not allowed and is not kept`);
      continue;
    }
    const path = join(out, e.name);
    const hash = await sha256(path);
    let res: Response;
    try {
      res = await fetch(
        `${o.master.replace(/\/$/, "")}/api/v1/worker/artifacts/${o.jobId}/${o.attempt}/${encodeURIComponent(e.name)}`,
        {
          method: "PUT",
          headers: { authorization: `Bearer ${o.token}`, "x-kiln-sha256": hash },
          body: Bun.file(path),
        },
      );
    } catch (err) {
      throw new RetryLater(`cannot reach the master to deliver artifacts: ${(err as Error).message}`);
    }
    if (res.status >= 500) throw new RetryLater(`the master answered ${res.status} to an artifact upload`);
    if (!res.ok) {
      // 4xx: this attempt is no longer the job's (re-queued or ended meanwhile), or the file is refused;
      // retrying would not change the answer.
      o.log.warn(`job ${o.jobId}: artifact ${e.name} refused: ${(await errorFrom(res)).message}`);
    }
  }
  writeFileSync(done, "");
}

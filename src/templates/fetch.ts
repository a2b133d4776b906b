import { rmSync } from "node:fs";
import { AppError, errorFrom } from "../lib/errors.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";

/** Downloads job JOB's artifact NAME from the master to DEST, checking its sha256 on the way. */
export async function fetchArtifact(
  master: string,
  auth: MasterAuth,
  job: number,
  name: string,
  dest: string,
): Promise<void> {
  const url = `${master.replace(/\/$/, "")}/api/v1/jobs/${job}/artifacts/${encodeURIComponent(name)}`;
  const res = await fetch(url, { headers: await auth.headers("GET", url), tls: auth.tls() });
  if (!res.ok || !res.body) {
    const e = await errorFrom(res);
    throw new AppError("ARTIFACT_FETCH", `cannot fetch artifact ${name} of job ${job}: ${e.message}`);
  }
  const expected = res.headers.get("x-kiln-sha256");
  const hash = new Bun.CryptoHasher("sha256");
  const out = Bun.file(dest).writer();
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    hash.update(chunk);
    out.write(chunk);
  }
  await out.end();
  if (expected && hash.digest("hex") !== expected) {
    rmSync(dest, { force: true });
    throw new AppError(
      "ARTIFACT_FETCH",
      `artifact ${name} of job ${job} arrived corrupted (sha256 mismatch)`,
    );
  }
}

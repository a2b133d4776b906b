import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";

/*
 * The master's artifact store: content-addressed files under DATA/artifacts/sha256/AB/HASH. An upload
 * is streamed to a temp file while it is hashed, checked against the hash the sender claims, and only
 * then renamed into place, so a stored file always matches its name.
 */

// One artifact may not exceed this: a disk image fits, a runaway job's output does not fill the master.
export const MAX_ARTIFACT = 16 * 2 ** 30;

/** Where the artifact content with `sha256` lives in data dir `data` (fanned out by its first two digits). */
export function artifactPath(data: string, sha256: string) {
  return join(data, "artifacts", "sha256", sha256.slice(0, 2), sha256);
}

/** Stores `body`; returns its size and sha256. Throws 400 when it does not match `claimed`. */
export async function storeArtifact(
  data: string,
  body: ReadableStream<Uint8Array>,
  claimed: string | null,
): Promise<{ size: number; sha256: string }> {
  const tmpDir = join(data, "artifacts", "tmp");
  mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
  const tmp = join(tmpDir, randomBytes(8).toString("hex"));
  const hash = createHash("sha256");
  const out = Bun.file(tmp).writer();
  let size = 0;
  try {
    for await (const chunk of body) {
      size += chunk.length;
      if (size > MAX_ARTIFACT)
        throw new AppError("TOO_LARGE", "artifact larger than 16 GiB", { status: 413 });
      hash.update(chunk);
      out.write(chunk);
    }
    await out.end();
    const sha256 = hash.digest("hex");
    if (claimed && claimed !== sha256) {
      throw new AppError(
        "CHECKSUM_MISMATCH",
        `artifact arrived with sha256 ${sha256}, not the ${claimed} it was sent with`,
      );
    }
    const dest = artifactPath(data, sha256);
    mkdirSync(join(dest, ".."), { recursive: true, mode: 0o700 });
    if (existsSync(dest)) rmSync(tmp);
    else renameSync(tmp, dest);
    return { size, sha256 };
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

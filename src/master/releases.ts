import { existsSync, linkSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import { checkName } from "../lib/names.ts";
import { getRelease, insertRelease } from "../store/releases.ts";
import type { ArtifactRow, JobRow, ReleaseRow } from "../store/schema.ts";
import { blobKey } from "./artifacts.ts";
import type { MasterContext } from "./context.ts";

/*
 * Releases: an artifact promoted under a tag becomes DATA/releases/TAG/FILE plus SHA256SUMS, made in a
 * temporary directory (the artifact's bytes copied out of the blob store) and renamed into place, so a reader sees a whole release or none. A tag is never
 * reused or changed, and retention never touches DATA/releases.
 */

/** Where the files of release `tag` live. */
export const releaseDir = (dataDir: string, tag: string) => join(dataDir, "releases", tag);

// Promotions run one at a time: the tag check, the files and the row form one step.
let chain: Promise<unknown> = Promise.resolve();

/** The tag rule: the project's one name rule (lowercase letters, digits, ".", "_", "-"). */
export const checkTag = (tag: string) => checkName("release tag", tag);

/** Makes artifact `artifact` of `job` the immutable release `tag`; 409 when the tag exists. */
export function promote(
  ctx: MasterContext,
  job: JobRow,
  artifact: ArtifactRow,
  tag: string,
  by: string,
): Promise<ReleaseRow> {
  const run = chain.then(() => promoteNow(ctx, job, artifact, tag, by));
  chain = run.catch(() => {});
  return run;
}

async function promoteNow(ctx: MasterContext, job: JobRow, artifact: ArtifactRow, tag: string, by: string) {
  const taken = await getRelease(ctx.store.db, tag);
  if (taken) {
    throw new AppError(
      "RELEASE_EXISTS",
      `release ${tag} already exists (job ${taken.jobId}, ${taken.file}); releases never change: choose a new tag`,
      { status: 409 },
    );
  }
  const dir = releaseDir(ctx.dataDir, tag);
  // A directory without a row is what a crash between the rename and the insert leaves: not a release.
  rmSync(dir, { recursive: true, force: true });
  const root = join(ctx.dataDir, "releases");
  const tmp = join(root, `.${tag}.partial`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true, mode: 0o755 });
  const file = artifact.name.split("/").pop() as string;
  try {
    await placeFile(ctx, artifact, join(tmp, file));
    writeFileSync(join(tmp, "SHA256SUMS"), `${artifact.sha256}  ${file}\n`, { mode: 0o644 });
    renameSync(tmp, dir);
  } catch (err) {
    // A full disk, most likely: what was copied so far must not hold on to the space until a restart.
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
  const row: ReleaseRow = {
    tag,
    jobId: job.id,
    artifact: artifact.name,
    file,
    size: artifact.size,
    sha256: artifact.sha256,
    project: job.project,
    createdAt: Date.now(),
    createdBy: by,
  };
  const inserted = await insertRelease(ctx.store, row).catch((err) => {
    // Not recorded (the database could not write): the files are no release, and take no space.
    rmSync(dir, { recursive: true, force: true });
    throw err;
  });
  if (!inserted) {
    throw new AppError("RELEASE_EXISTS", `release ${tag} already exists: choose a new tag`, { status: 409 });
  }
  ctx.log.info(`release ${tag}: ${file} of job ${job.id} (sha256 ${artifact.sha256}) promoted by ${by}`);
  return row;
}

/**
 * Puts the artifact's content at `dest`: a hard link to the stored blob where the store keeps it on this
 * filesystem (blobs never change in place, and the link outlives the blob's removal), else a copy. A
 * release is never a reference: the artifact's blob goes when its job's artifacts do; a release stays.
 */
async function placeFile(ctx: MasterContext, artifact: ArtifactRow, dest: string) {
  const key = blobKey(artifact.sha256);
  const local = ctx.artifacts.blobs.localPath?.(key);
  if (local) {
    try {
      linkSync(local, dest);
      return;
    } catch (err) {
      // EXDEV (the releases on another filesystem) or a filesystem without hard links: copy instead.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "EXDEV" && code !== "EPERM" && code !== "EMLINK") throw err;
    }
  }
  const body = await ctx.artifacts.blobs.get(key);
  if (!body) {
    throw new AppError(
      "RELEASE_MISSING",
      `the content of ${artifact.name} (sha256 ${artifact.sha256}) is missing from the ${ctx.artifacts.blobs.kind} store`,
      { status: 410 },
    );
  }
  await Bun.write(dest, new Response(body));
}

/** Removes leftovers of promotions a crash interrupted (temporary directories); call at start-up. */
export function sweepReleases(dataDir: string) {
  const root = join(dataDir, "releases");
  if (!existsSync(root)) return;
  for (const name of new Bun.Glob(".*.partial").scanSync({ cwd: root, onlyFiles: false, dot: true }))
    rmSync(join(root, name), { recursive: true, force: true });
}

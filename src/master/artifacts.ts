import { mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { AppError, badRequest, coerceError, isDiskFull, storageFull } from "../lib/errors.ts";
import { keyedLock } from "../lib/keyed-lock.ts";
import type { ArtifactInfo } from "../protocol/job.ts";
import type { BlobStore } from "../storage/blob-store.ts";
import { kindOfFile } from "../storage/kind.ts";
import { type ArtifactView, getArtifact, getBlob, putArtifact } from "../store/artifacts.ts";
import type { Store } from "../store/open.ts";
import type { ArtifactBlobRow } from "../store/schema.ts";

/*
 * The master's side of artifacts. A worker sends a file in chunks of at most MAX_CHUNK bytes, each one a
 * PUT that says at which offset it starts; the bytes go to DATA/artifacts/incoming/JOB.ATTEMPT.SHA256,
 * which keeps its length as the offset reached. A cut connection, a killed worker or a full disk leaves
 * that partial file and nothing else: the worker asks for the offset and goes on from there. Only when
 * the last byte is in is the whole file hashed against the sha256 the worker claimed, its kind read,
 * and the file handed to the blob store; the artifact row is written after that, so no row ever names a
 * partial or unverified file. Memory stays bounded: one chunk at most per request, written as it comes.
 */

// The most one upload request may carry. Bun's server reads a request body ahead of its handler, so this
// bounds what an upload can hold in the master's memory; the worker sends 8 MiB.
export const MAX_CHUNK = 16 * 2 ** 20;

/** What a worker says about the file it uploads. */
export interface UploadClaim {
  jobId: number;
  attempt: number;
  name: string;
  sha256: string;
  size: number;
  /** Permission bits of the file on the worker. */
  mode: number;
}

/** The master's artifact stores and the uploads in progress. */
export interface ArtifactService {
  /** Where new blobs go (the data dir, or the bucket of `[storage]`). */
  readonly blobs: BlobStore;
  /** How many bytes of this upload the master holds: its size when the content is stored already. */
  offset(c: UploadClaim): Promise<number>;
  /**
   * Appends `body`, which starts at `offset`, to the upload. Resolves to the offset reached, or to the
   * recorded artifact once the last byte is in and the content checked. Throws 409 UPLOAD_OFFSET when
   * `offset` is not where the upload stands, 400 CHECKSUM_MISMATCH (and drops the partial) when the
   * content is not what was claimed, 507 when the disk is full (the partial stays for a resume).
   */
  receive(
    c: UploadClaim,
    offset: number,
    body: ReadableStream<Uint8Array> | null,
  ): Promise<{ offset: number } | { artifact: ArtifactView }>;
  /** The bytes of a stored artifact (or of `range`), or null when its blob is missing from its store. */
  open(a: ArtifactView, range?: { start: number; end: number }): ReturnType<BlobStore["get"]>;
  /** Deletes the bytes of blobs no artifact names any more (the rows are gone already). */
  dropBlobs(rows: ArtifactBlobRow[]): Promise<void>;
  /** Removes partial uploads whose job attempt is over (`active` says which still run). */
  sweepIncoming(active: (jobId: number, attempt: number) => Promise<boolean>): Promise<number>;
}

/** An artifact as the API shows it (`kiln artifacts`, `kiln show`). */
export const artifactView = (a: ArtifactView): ArtifactInfo => ({
  name: a.name,
  size: a.size,
  sha256: a.sha256,
  kind: a.kind,
  mode: a.mode,
});

/** The blob store key of the content with this sha256. */
export const blobKey = (sha256: string) => `sha256/${sha256.slice(0, 2)}/${sha256}`;

/** The master's artifact service over its blob store(s): uploads, reads, and deleting what no row names. */
export function createArtifactService(o: {
  dataDir: string;
  store: Store;
  /** Where new blobs go; the data dir's store is always kept too, for blobs recorded there before. */
  blobs: BlobStore;
  local: BlobStore;
  log: ConsolaInstance;
  /** Hears a failed write for lack of space (the master's storage health). */
  wrote?: (err: unknown) => void;
}): ArtifactService {
  const incoming = join(o.dataDir, "artifacts", "incoming");
  const lock = keyedLock();
  // Hashers of uploads this process has followed from byte 0; a resume after a master restart hashes
  // the partial file again at the end instead.
  const hashers = new Map<string, { hasher: Bun.CryptoHasher; at: number }>();
  const storeOf = (kind: string) => (kind === o.blobs.kind ? o.blobs : kind === "fs" ? o.local : null);
  const partialOf = (c: UploadClaim) => join(incoming, `${c.jobId}.${c.attempt}.${c.sha256}`);
  const sizeOf = (path: string) => statSync(path, { throwIfNoEntry: false })?.size ?? 0;

  const stored = async (c: UploadClaim) => (await o.blobs.stat(blobKey(c.sha256)))?.size === c.size;

  const hashFile = async (path: string) => {
    const h = new Bun.CryptoHasher("sha256");
    for await (const chunk of Bun.file(path).stream()) h.update(chunk);
    return h.digest("hex");
  };

  /** The last byte is in: check, classify, store, record. Serialised with every other blob change. */
  const finish = async (c: UploadClaim, partial: string | null): Promise<ArtifactView> => {
    const key = blobKey(c.sha256);
    let kind = (await getBlob(o.store.db, c.sha256))?.kind;
    if (partial) {
      const followed = hashers.get(partial);
      const got = followed?.at === c.size ? followed.hasher.digest("hex") : await hashFile(partial);
      hashers.delete(partial);
      if (got !== c.sha256) {
        rmSync(partial, { force: true });
        throw new AppError(
          "CHECKSUM_MISMATCH",
          `artifact ${c.name} arrived with sha256 ${got}, not the ${c.sha256} it was sent with; the upload starts over`,
        );
      }
      kind = await kindOfFile(partial);
      // The same content may have been stored meanwhile (another job): then this copy is not needed.
      if (await stored(c)) rmSync(partial, { force: true });
      else await o.blobs.adopt(key, partial);
    }
    const orphaned = await putArtifact(o.store, {
      jobId: c.jobId,
      name: c.name,
      attempt: c.attempt,
      size: c.size,
      sha256: c.sha256,
      mode: c.mode,
      kind: kind ?? "other",
      store: o.blobs.kind,
    });
    await dropBlobs(orphaned);
    const row = await getArtifact(o.store.db, c.jobId, c.name);
    if (!row) throw new Error(`artifact ${c.name} of job ${c.jobId} vanished as it was recorded`);
    return row;
  };

  const dropBlobs = async (rows: ArtifactBlobRow[]) => {
    for (const b of rows) {
      const s = storeOf(b.store);
      await s
        ?.delete(blobKey(b.sha256))
        .catch((err) =>
          o.log.warn(`cannot delete blob ${b.sha256} from ${b.store}: ${coerceError(err).message}`),
        );
    }
  };

  // Blobs are shared between jobs: storing one and recording (or dropping) a reference to it must not
  // interleave with another job's, or a blob could be deleted just as a new row names it.
  const blobLock = keyedLock();

  return {
    blobs: o.blobs,
    offset: (c) =>
      lock(partialOf(c), async () => {
        if (await stored(c)) return c.size;
        const partial = partialOf(c);
        const have = sizeOf(partial);
        if (have <= c.size) return have;
        rmSync(partial, { force: true });
        return 0;
      }),
    receive: (c, offset, body) =>
      lock(partialOf(c), async () => {
        const partial = partialOf(c);
        const have = sizeOf(partial);
        // Nothing partial and the content stored already (another job's, or an earlier try whose answer
        // was lost): no byte needs to travel.
        if (have === 0 && offset === c.size && (await stored(c))) {
          await body?.cancel();
          return { artifact: await blobLock("blobs", () => finish(c, null)) };
        }
        if (offset !== have) {
          await body?.cancel();
          throw new AppError(
            "UPLOAD_OFFSET",
            `the master holds ${have} bytes of artifact ${c.name}, not ${offset}: continue from there`,
            { status: 409 },
          );
        }
        mkdirSync(incoming, { recursive: true, mode: 0o700 });
        let followed = hashers.get(partial);
        if (have === 0) {
          followed = { hasher: new Bun.CryptoHasher("sha256"), at: 0 };
          hashers.set(partial, followed);
        }
        let at = have;
        const fh = await open(partial, "a", 0o600);
        try {
          if (body)
            for await (const chunk of body) {
              if (at + chunk.length > c.size || at + chunk.length - offset > MAX_CHUNK) {
                // Cut back to where this request started: nothing past the claim is ever kept.
                await fh.truncate(offset);
                if (followed) hashers.delete(partial);
                throw badRequest(
                  `artifact ${c.name}: a chunk may carry at most ${MAX_CHUNK} bytes and the file ${c.size}`,
                  "UPLOAD_TOO_LONG",
                );
              }
              // Written before the next chunk is read, so a fast sender waits for the disk.
              await fh.write(chunk);
              if (followed?.at === at) {
                followed.hasher.update(chunk);
                followed.at += chunk.length;
              }
              at += chunk.length;
            }
        } catch (err) {
          if (isDiskFull(err)) {
            o.wrote?.(err);
            // The bytes written so far stay: the partial file's length is the offset to resume from.
            throw storageFull(o.dataDir, err);
          }
          throw err;
        } finally {
          await fh.close().catch(() => {});
          // The request's buffers are garbage now, but the collector does not count them as heap and
          // lets a gigabyte upload pile up tens of MiB of them; one young collection per chunk (a few
          // MiB) keeps the master's growth to about a chunk.
          Bun.gc(false);
        }
        if (at < c.size) return { offset: at };
        return { artifact: await blobLock("blobs", () => finish(c, partial)) };
      }),
    open(a, range) {
      const s = storeOf(a.store);
      return s ? s.get(blobKey(a.sha256), range) : Promise.resolve(null);
    },
    dropBlobs: (rows) => blobLock("blobs", () => dropBlobs(rows)),
    async sweepIncoming(active) {
      let removed = 0;
      let names: string[] = [];
      try {
        names = readdirSync(incoming);
      } catch {
        return 0; // No upload ever started.
      }
      for (const name of names) {
        const m = /^(\d+)\.(\d+)\.[0-9a-f]{64}$/.exec(name);
        if (m && (await active(Number(m[1]), Number(m[2])))) continue;
        const path = join(incoming, name);
        await lock(path, async () => {
          rmSync(path, { force: true });
          hashers.delete(path);
        });
        removed++;
      }
      return removed;
    },
  };
}

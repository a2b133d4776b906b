import { rmSync } from "node:fs";
import { type BlobStore, type ByteRange, checkKey } from "./blob-store.ts";

/** Where an S3-compatible bucket is and how to sign for it (the `[storage]` section of kiln.toml). */
export interface S3Options {
  endpoint: string;
  bucket: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Put before every key, so one bucket can serve several masters or other data. */
  prefix: string;
}

// Multipart parts of 8 MiB, two in flight: 16 MiB of memory per upload at most, and S3's 10 000-part
// limit still allows 80 GiB per blob.
const PART_SIZE = 8 * 2 ** 20;
const QUEUE = 2;

/**
 * Blobs in an S3-compatible bucket through Bun's own S3 client. A put is a multipart upload, which S3
 * makes visible only when completed, so readers never see part of a blob.
 */
export function createS3BlobStore(o: S3Options): BlobStore {
  const client = new Bun.S3Client({
    endpoint: o.endpoint,
    bucket: o.bucket,
    region: o.region,
    accessKeyId: o.accessKeyId,
    secretAccessKey: o.secretAccessKey,
  });
  const fileOf = (key: string) => client.file(`${o.prefix}${checkKey(key)}`);
  const put = async (key: string, body: ReadableStream<Uint8Array>) => {
    const w = fileOf(key).writer({ partSize: PART_SIZE, queueSize: QUEUE, retry: 3 });
    try {
      for await (const chunk of body) {
        w.write(chunk);
        // Waits while parts are in flight: the file is read no faster than the bucket takes it.
        await w.flush();
      }
      await w.end();
    } catch (err) {
      // An unfinished multipart upload is invisible to readers; ending it here only frees the client.
      await Promise.resolve(w.end(err as Error)).catch(() => {});
      throw err;
    }
  };
  return {
    kind: "s3",
    put,
    async adopt(key, path) {
      await put(key, Bun.file(path).stream());
      rmSync(path, { force: true });
    },
    async get(key, range?: ByteRange) {
      const f = fileOf(key);
      if (!(await f.exists())) return null;
      // A stream, not the S3File: Bun answers an S3File body with a redirect to a presigned URL, which
      // would hand out the bucket's address and skip Kiln's own access checks.
      return (range ? f.slice(range.start, range.end + 1) : f).stream();
    },
    async stat(key) {
      const f = fileOf(key);
      if (!(await f.exists())) return null;
      return { size: (await f.stat()).size };
    },
    async delete(key) {
      await fileOf(key).delete();
    },
  };
}

import { join } from "node:path";
import type { Config } from "../config/schema.ts";
import { AppError } from "../lib/errors.ts";
import type { BlobStore } from "./blob-store.ts";
import { createFsBlobStore } from "./fs-store.ts";
import { createS3BlobStore } from "./s3-store.ts";

/** The data dir's own blob store: DATA/artifacts, where blobs live unless `[storage]` says otherwise. */
export const localBlobStore = (dataDir: string) => createFsBlobStore(join(dataDir, "artifacts"));

/**
 * The blob store `[storage]` configures: the data dir by default, or an S3-compatible bucket. Refuses an
 * S3 backend whose endpoint or bucket is missing, naming the key to set.
 */
export function openBlobStore(cfg: Pick<Config, "storage">, dataDir: string): BlobStore {
  const s = cfg.storage;
  if (!s || s.backend === "fs") return localBlobStore(dataDir);
  for (const key of ["s3_endpoint", "s3_bucket"] as const) {
    if (!s[key])
      throw new AppError(
        "CONFIG_INVALID",
        `storage.backend is "s3" but storage.${key} is empty: set it in [storage] or KILN_STORAGE_${key.toUpperCase()}`,
      );
  }
  return createS3BlobStore({
    endpoint: s.s3_endpoint,
    bucket: s.s3_bucket,
    region: s.s3_region,
    accessKeyId: s.s3_access_key_id,
    secretAccessKey: s.s3_secret_access_key,
    prefix: s.s3_prefix,
  });
}

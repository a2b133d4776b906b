/*
 * Where the master keeps blobs: content it has verified, stored once under a key (for artifacts,
 * `sha256/AB/HASH`). Two backends implement it: the data dir (the default) and an S3-compatible bucket.
 * Artifacts use it today; package repositories and releases are meant to store through it too.
 */

/** Bytes `start` to `end` of a blob, both inclusive, as an HTTP Range names them (RFC 9110, 14.1.2). */
export interface ByteRange {
  start: number;
  end: number;
}

/** One place blobs live. Keys are made by Kiln (never by a client) and hold only `[A-Za-z0-9/._-]`. */
export interface BlobStore {
  /** "fs" or "s3": what `kiln show` and the logs name. */
  readonly kind: string;
  /**
   * Stores `body` under `key`, streaming it (memory stays bounded whatever its size). A reader never sees
   * a partly written blob: the new content appears whole or not at all.
   */
  put(key: string, body: ReadableStream<Uint8Array>): Promise<void>;
  /**
   * Stores the local file at `path` under `key` and removes the file. The data dir renames it into
   * place (no copy); other backends stream it.
   */
  adopt(key: string, path: string): Promise<void>;
  /** The blob's bytes, or the bytes of `range`, as a Response body that streams. Null when absent. */
  get(key: string, range?: ByteRange): Promise<Blob | ReadableStream<Uint8Array> | null>;
  /** The blob's size, or null when there is none under `key`. */
  stat(key: string): Promise<{ size: number } | null>;
  /** Removes the blob; removing one that is not there is no error. */
  delete(key: string): Promise<void>;
  /**
   * A file on this host that holds the blob, which a caller may hard-link but never write, or null where
   * the backend keeps none (a bucket) or the blob is absent. Blobs are never changed in place.
   */
  localPath?(key: string): string | null;
}

/** Checks a key before it reaches a path or a URL: Kiln builds keys, but a mistake must not climb. */
export function checkKey(key: string): string {
  if (!/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(key) || key.split("/").some((p) => /^\.+$/.test(p)))
    throw new Error(`not a blob key: ${JSON.stringify(key)}`);
  return key;
}

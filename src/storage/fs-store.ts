import { randomBytes } from "node:crypto";
import { mkdirSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type BlobStore, type ByteRange, checkKey } from "./blob-store.ts";

/**
 * Blobs as files below `root` (DATA/blobs by default). A put is written to a temp file in the same file
 * system and renamed into place, so a blob path always holds a whole blob.
 */
export function createFsBlobStore(root: string): BlobStore {
  const tmpDir = join(root, "tmp");
  const pathOf = (key: string) => join(root, checkKey(key));
  const place = (key: string, from: string) => {
    const dest = pathOf(key);
    mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
    renameSync(from, dest);
  };
  return {
    kind: "fs",
    async put(key, body) {
      mkdirSync(tmpDir, { recursive: true, mode: 0o700 });
      const tmp = join(tmpDir, randomBytes(8).toString("hex"));
      const fh = await open(tmp, "w", 0o600);
      try {
        // Each chunk is written before the next is read: the reader waits for the disk, memory does not grow.
        for await (const chunk of body) await fh.write(chunk);
        await fh.close();
        place(key, tmp);
      } catch (err) {
        await fh.close().catch(() => {});
        rmSync(tmp, { force: true });
        throw err;
      }
    },
    async adopt(key, path) {
      place(key, path);
    },
    async get(key, range?: ByteRange) {
      const path = pathOf(key);
      if (!statSync(path, { throwIfNoEntry: false })?.isFile()) return null;
      const file = Bun.file(path);
      // A BunFile (or its slice) as a Response body goes out with sendfile(2): no copy through memory.
      return range ? file.slice(range.start, range.end + 1) : file;
    },
    async stat(key) {
      const st = statSync(pathOf(key), { throwIfNoEntry: false });
      return st?.isFile() ? { size: st.size } : null;
    },
    async delete(key) {
      rmSync(pathOf(key), { force: true });
    },
    localPath(key) {
      const path = pathOf(key);
      return statSync(path, { throwIfNoEntry: false })?.isFile() ? path : null;
    },
  };
}

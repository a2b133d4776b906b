import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import embedded from "../../dist/kiln-sandbox" with { type: "file" };

/*
 * The native launcher travels inside the kiln binary. At worker start it is written out under the data
 * dir, named by its own hash, and checked against that hash every time the worker starts, so a tampered
 * or truncated copy is replaced rather than run. This module is imported only by the sandbox runner, and
 * dist/kiln-sandbox must exist when it is (scripts/build makes it first).
 */

/** Writes the embedded kiln-sandbox to DIR/kiln-sandbox-HASH (0755, root-owned) and returns its path. */
export async function installLauncher(dir: string): Promise<string> {
  const bytes = new Uint8Array(await Bun.file(embedded).arrayBuffer());
  const hash = createHash("sha256").update(bytes).digest("hex");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const path = join(dir, `kiln-sandbox-${hash.slice(0, 16)}`);
  if (existsSync(path) && createHash("sha256").update(readFileSync(path)).digest("hex") === hash) return path;
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, bytes, { mode: 0o700 });
  chmodSync(tmp, 0o755);
  renameSync(tmp, path);
  return path;
}

import { chmodSync, renameSync, rmSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import { defineCommand } from "citty";
import { AppError, errorFrom } from "../lib/errors.ts";
import { artifactNameProblem } from "../lib/names.ts";
import { formatSize } from "../lib/size.ts";
import type { ArtifactInfo } from "../protocol/job.ts";
import type { Client } from "./client.ts";
import { checkFlags, clientArgs, clientOf, jobIdArg, print, table } from "./common.ts";

const listArgs = {
  ...clientArgs,
  job: { type: "positional", description: "Job id", required: false },
} as const;
export const artifacts = defineCommand({
  meta: { name: "artifacts", description: "List a job's artifacts" },
  args: listArgs,
  async run(ctx) {
    checkFlags(ctx, listArgs);
    const id = jobIdArg(ctx.args.job);
    const rows = await clientOf(ctx.args).request<ArtifactInfo[]>("GET", `/api/v1/jobs/${id}/artifacts`);
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? `job ${id} has no artifacts`
        : table(
            ["NAME", "KIND", "MODE", "SIZE", "SHA256"],
            rows.map((a) => [
              a.name,
              a.kind,
              a.mode.toString(8).padStart(4, "0"),
              formatSize(a.size),
              a.sha256,
            ]),
          ),
    );
  },
});

const getArgs = {
  ...clientArgs,
  job: { type: "positional", description: "Job id", required: false },
  name: { type: "positional", description: "Artifact name", required: false },
  output: {
    type: "string",
    alias: "o",
    description: "Write here (default: ./NAME, the last part of a dir/file name; - for stdout)",
    valueHint: "FILE",
  },
} as const;
export const download = defineCommand({
  meta: {
    name: "download",
    description:
      "Fetch one artifact of a job, checking its sha256; resumes FILE.kiln-partial left by a cut download",
  },
  args: getArgs,
  async run(ctx) {
    checkFlags(ctx, getArgs);
    const id = jobIdArg(ctx.args.job);
    const name = ctx.args.name;
    if (!name) throw new AppError("USAGE", "kiln download JOB NAME [-o FILE]: see `kiln artifacts JOB`");
    const problem = artifactNameProblem(name);
    if (problem) throw new AppError("USAGE", `${JSON.stringify(name)} is not an artifact name: ${problem}`);
    // A `dir/file` artifact lands as ./file: a name never decides where outside the current dir it goes.
    const target = ctx.args.output ?? name.split("/").pop()!;
    const got = await fetchArtifact(clientOf(ctx.args), id, name, target);
    if (target !== "-" && !ctx.args.json)
      process.stderr.write(
        `${target}: ${formatSize(got.size)}, sha256 ${got.sha256}${got.resumedAt ? ` (resumed at ${formatSize(got.resumedAt)})` : ""}\n`,
      );
    if (ctx.args.json) print(true, { name, path: target, size: got.size, sha256: got.sha256 }, () => "");
  },
});

/**
 * Downloads artifact `name` of job `id` to `target` ("-" for stdout) through `target.kiln-partial`,
 * which a cut download leaves behind and the next one continues with a Range request. The file gets
 * the artifact's mode (less the umask) and appears under `target` only once its sha256 matches.
 */
async function fetchArtifact(client: Client, id: number, name: string, target: string) {
  const path = `/api/v1/jobs/${id}/artifacts/${encodeURIComponent(name)}`;
  const partial = target === "-" ? null : `${target}.kiln-partial`;
  for (let round = 0; ; round++) {
    const have = partial ? (statSync(partial, { throwIfNoEntry: false })?.size ?? 0) : 0;
    const res = await client.raw(path, { headers: have > 0 ? { range: `bytes=${have}-` } : {} });
    if (res.status === 416 && partial) {
      // The partial file is not a prefix of this artifact (as long or longer): start over.
      await res.body?.cancel();
      rmSync(partial, { force: true });
      continue;
    }
    if (!res.ok) throw await errorFrom(res);
    const expected = res.headers.get("x-kiln-sha256");
    const size = Number(res.headers.get("x-kiln-size") ?? res.headers.get("content-length") ?? 0);
    const mode = Number.parseInt(res.headers.get("x-kiln-mode") ?? "644", 8);
    const from =
      res.status === 206 ? Number(/^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1]) : 0;
    const hash = new Bun.CryptoHasher("sha256");
    const sink = partial ? await open(partial, from > 0 ? "a" : "w", 0o600) : null;
    try {
      if (sink && from > 0) {
        // The bytes kept from last time count towards the hash: read them back first.
        for await (const chunk of Bun.file(partial!).slice(0, from).stream()) hash.update(chunk);
      }
      const bar = progressBar(name, size, from);
      let at = from;
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        hash.update(chunk);
        // Each chunk is on disk (or in the pipe) before the next is read: memory stays flat.
        if (sink) await sink.write(chunk);
        else if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once("drain", r));
        at += chunk.length;
        bar?.update(at);
      }
      bar?.done();
    } finally {
      await sink?.close();
    }
    const sha256 = hash.digest("hex");
    if (expected && sha256 !== expected) {
      if (partial) rmSync(partial, { force: true });
      // Resumed onto bytes of another version: once more from the start, which settles it.
      if (from > 0 && round === 0) continue;
      throw new AppError(
        "CHECKSUM_MISMATCH",
        `${name} arrived with sha256 ${sha256}, expected ${expected}; try again`,
      );
    }
    if (partial) {
      renameSync(partial, target);
      chmodSync(target, mode & 0o777 & ~process.umask());
    }
    return { size, sha256, resumedAt: from };
  }
}

/**
 * A one-line progress bar on stderr, redrawn at most ten times a second; none when stderr is not a
 * terminal, so logs and pipes never get carriage returns.
 */
function progressBar(name: string, size: number, from: number) {
  if (!process.stderr.isTTY) return null;
  const started = performance.now();
  let last = 0;
  const draw = (at: number) => {
    const pct = size > 0 ? Math.floor((at / size) * 100) : 100;
    const width = 24;
    const filled = Math.round((pct / 100) * width);
    const secs = (performance.now() - started) / 1000;
    const rate = secs > 0 ? `${formatSize(Math.round((at - from) / secs))}/s` : "";
    process.stderr.write(
      `\r${name} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(pct).padStart(3)}% ${formatSize(at)}/${formatSize(size)} ${rate}\x1b[K`,
    );
  };
  return {
    update(at: number) {
      const now = performance.now();
      if (now - last < 100) return;
      last = now;
      draw(at);
    },
    done() {
      draw(size);
      process.stderr.write("\n");
    },
  };
}

/** A job's artifacts on one line for `kiln show`: name, kind and size of the first few. */
export function artifactsText(list: ArtifactInfo[]): string | null {
  if (list.length === 0) return null;
  const shown = list.slice(0, 5).map((a) => `${a.name} (${a.kind}, ${formatSize(a.size)})`);
  return shown.join(", ") + (list.length > 5 ? `, and ${list.length - 5} more (kiln artifacts)` : "");
}

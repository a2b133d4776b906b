import { renameSync, rmSync } from "node:fs";
import { defineCommand } from "citty";
import { AppError, errorFrom } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { artifactNameProblem } from "../protocol/artifact-name.ts";
import { checkFlags, clientArgs, clientOf, jobIdArg, print, table } from "./common.ts";

interface Artifact {
  name: string;
  size: number;
  sha256: string;
}

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
    const rows = await clientOf(ctx.args).request<Artifact[]>("GET", `/api/v1/jobs/${id}/artifacts`);
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? `job ${id} has no artifacts`
        : table(
            ["NAME", "SIZE", "SHA256"],
            rows.map((a) => [a.name, formatSize(a.size), a.sha256]),
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
  meta: { name: "download", description: "Fetch one artifact of a job, checking its sha256" },
  args: getArgs,
  async run(ctx) {
    checkFlags(ctx, getArgs);
    const id = jobIdArg(ctx.args.job);
    const name = ctx.args.name;
    if (!name) throw new AppError("USAGE", "kiln download JOB NAME [-o FILE]: see `kiln artifacts JOB`");
    const problem = artifactNameProblem(name);
    if (problem) throw new AppError("USAGE", `${JSON.stringify(name)} is not an artifact name: ${problem}`);
    const client = clientOf(ctx.args);
    const res = await client.raw(`/api/v1/jobs/${id}/artifacts/${encodeURIComponent(name)}`);
    if (!res.ok) throw await errorFrom(res);
    const expected = res.headers.get("x-kiln-sha256");
    // A `dir/file` artifact lands as ./file: a name never decides where outside the current dir it goes.
    const target = ctx.args.output ?? name.split("/").pop()!;
    const hash = new Bun.CryptoHasher("sha256");
    const tmp = target === "-" ? null : `${target}.kiln-partial`;
    const sink = tmp ? Bun.file(tmp).writer() : null;
    let size = 0;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      size += chunk.length;
      if (sink) sink.write(chunk);
      else process.stdout.write(chunk);
    }
    await sink?.end();
    const got = hash.digest("hex");
    if (expected && got !== expected) {
      if (tmp) rmSync(tmp, { force: true });
      throw new AppError(
        "CHECKSUM_MISMATCH",
        `${name} arrived with sha256 ${got}, expected ${expected}; try again`,
      );
    }
    if (tmp) renameSync(tmp, target);
    if (target !== "-" && !ctx.args.json)
      process.stderr.write(`${target}: ${formatSize(size)}, sha256 ${got}\n`);
    if (ctx.args.json) print(true, { name, path: target, size, sha256: got }, () => "");
  },
});

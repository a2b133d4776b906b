import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { checkFlags, clientArgs, clientOf, jobIdArg, print, safe, table } from "./common.ts";

/** A release as the master's API returns it. */
interface Release {
  tag: string;
  job: number;
  artifact: string;
  file: string;
  size: number;
  sha256: string;
  project: string;
  createdAt: number;
  createdBy: string | null;
  url: string;
}

const promoteArgs = {
  ...clientArgs,
  job: { type: "positional", description: "Job id (a succeeded job)", required: false },
  artifact: { type: "positional", description: "Artifact name (see `kiln artifacts JOB`)", required: false },
  release: {
    type: "string",
    description: "The new release's tag: lowercase letters, digits, '.', '_', '-' (never reused)",
    valueHint: "TAG",
  },
} as const;
export const promote = defineCommand({
  meta: { name: "promote", description: "Make a succeeded job's artifact an immutable release" },
  args: promoteArgs,
  async run(ctx) {
    checkFlags(ctx, promoteArgs);
    const job = jobIdArg(ctx.args.job);
    const { artifact, release: tag } = ctx.args;
    if (!artifact || !tag)
      throw new AppError("USAGE", "kiln promote JOB ARTIFACT --release TAG: see `kiln artifacts JOB`");
    const client = clientOf(ctx.args);
    const r = await client.request<Release>("POST", "/api/v1/releases", { job, artifact, tag });
    print(
      ctx.args.json,
      r,
      () => `release ${r.tag}: ${safe(r.file)} (sha256 ${r.sha256}) at ${client.url}${r.url}`,
    );
  },
});

const listArgs = {
  ...clientArgs,
  tag: { type: "positional", description: "Show this release only", required: false },
} as const;
export const releases = defineCommand({
  meta: { name: "releases", description: "List releases (newest first), or show one" },
  args: listArgs,
  async run(ctx) {
    checkFlags(ctx, listArgs);
    const client = clientOf(ctx.args);
    if (ctx.args.tag) {
      const r = await client.request<Release>("GET", `/api/v1/releases/${encodeURIComponent(ctx.args.tag)}`);
      print(ctx.args.json, r, () =>
        [
          `tag:      ${r.tag}`,
          `file:     ${safe(r.file)} (${formatSize(r.size)})`,
          `sha256:   ${r.sha256}`,
          `from:     job ${r.job}, artifact ${safe(r.artifact)} (project ${r.project})`,
          `promoted: ${new Date(r.createdAt).toISOString()} by ${safe(r.createdBy ?? "?")}`,
          `url:      ${client.url}${r.url}`,
          `checksums: ${client.url}/releases/${r.tag}/SHA256SUMS`,
        ].join("\n"),
      );
      return;
    }
    const rows = await client.request<Release[]>("GET", "/api/v1/releases");
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? "no releases yet: promote an artifact with `kiln promote JOB ARTIFACT --release TAG`"
        : table(
            ["TAG", "FILE", "SIZE", "JOB", "PROMOTED"],
            rows.map((r) => [r.tag, r.file, formatSize(r.size), r.job, new Date(r.createdAt).toISOString()]),
          ),
    );
  },
});

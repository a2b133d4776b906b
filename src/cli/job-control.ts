import { basename } from "node:path";
import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { checkFlags } from "./common.ts";

/*
 * The job's control program: `/kiln/bin/kiln job ...` inside a sandbox. It talks only to $KILN_API, the
 * job's own API proxy, never to the master.
 */

/** The job API's answer to one request, its JSON body parsed (null when it has none). */
async function apiFetch(
  path: string,
  init: RequestInit = {},
): Promise<{ res: Response; body: { error?: { code?: string; message: string } } | null }> {
  const api = process.env.KILN_API;
  if (!api) throw new AppError("USAGE", "kiln job works only inside a Kiln job: $KILN_API is not set");
  let res: Response;
  try {
    res = await fetch(`${api}${path}`, init);
  } catch (err) {
    throw new AppError("API_UNREACHABLE", `cannot reach the job API at ${api}: ${(err as Error).message}`);
  }
  return { res, body: (await res.json().catch(() => null)) as { error?: { message: string } } | null };
}

async function callApi(path: string, init: RequestInit = {}): Promise<unknown> {
  const { res, body } = await apiFetch(path, init);
  if (!res.ok) throw new AppError("API_ERROR", body?.error?.message ?? `the job API answered ${res.status}`);
  return body;
}

const post = (path: string, body: unknown) =>
  callApi(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });

const progressArgs = {
  percent: { type: "positional", description: "0 to 100", required: false },
  message: { type: "positional", description: "What the job is doing", required: false, valueHint: "[MSG]" },
} as const;
const progress = defineCommand({
  meta: { name: "progress", description: "Report progress: kiln job progress PCT [MSG]" },
  args: progressArgs,
  async run(ctx) {
    checkFlags(ctx, progressArgs);
    const pct = ctx.args.percent;
    if (!pct || !/^\d{1,3}$/.test(pct) || Number(pct) > 100) {
      throw new AppError("USAGE", "kiln job progress PCT [MSG]: PCT is a whole number from 0 to 100");
    }
    const message = ctx.args._.slice(1).join(" ") || undefined;
    await post("/v1/progress", { percent: Number(pct), message });
  },
});

const brokenArgs = {
  message: { type: "positional", description: "What is broken", required: false },
} as const;
const markBroken = defineCommand({
  meta: { name: "mark-broken", description: "Hold this job's slot until an operator releases it" },
  args: brokenArgs,
  async run(ctx) {
    checkFlags(ctx, brokenArgs);
    const message = ctx.args._.join(" ");
    if (!message) throw new AppError("USAGE", "kiln job mark-broken MSG: say what is broken");
    await post("/v1/mark-broken", { message });
    process.stderr.write("kiln: this slot is held until an operator releases it\n");
  },
});

const uploadArgs = {
  file: { type: "positional", description: "File to upload as an artifact", required: false },
  name: { type: "string", description: "Artifact name (default: the file's name)", valueHint: "NAME" },
} as const;
const upload = defineCommand({
  meta: { name: "upload", description: "Upload a file as one of the job's artifacts now" },
  args: uploadArgs,
  async run(ctx) {
    checkFlags(ctx, uploadArgs);
    const file = ctx.args.file;
    if (!file) throw new AppError("USAGE", "kiln job upload FILE [--name NAME]");
    const f = Bun.file(file);
    if (!(await f.exists())) throw new AppError("USAGE", `${file}: no such file`);
    const name = ctx.args.name ?? basename(file);
    const res = await callApi(`/v1/upload?name=${encodeURIComponent(name)}`, {
      method: "POST",
      headers: {
        "content-length": String(f.size),
        "x-kiln-mode": ((await f.stat()).mode & 0o777).toString(8),
      },
      body: f,
    });
    const got = res as { name?: string; size?: number };
    process.stdout.write(`uploaded ${got.name ?? name} (${formatSize(got.size ?? f.size)})\n`);
  },
});

const templateArgs = { name: { type: "positional", description: "Template name", required: false } } as const;
const template = defineCommand({
  meta: { name: "template", description: "Build or fetch a template and attach it at /kiln/templates/NAME" },
  args: templateArgs,
  async run(ctx) {
    checkFlags(ctx, templateArgs);
    const name = ctx.args.name;
    if (!name) throw new AppError("USAGE", "kiln job template NAME");
    const res = (await callApi(`/v1/templates/${encodeURIComponent(name)}`)) as { path: string };
    process.stdout.write(`${res.path}\n`);
  },
});

const versionArgs = {
  pkg: { type: "positional", description: "Package name", required: false },
  repo: { type: "string", description: "Repository to look in", valueHint: "R" },
} as const;
const version = defineCommand({
  meta: {
    name: "version",
    description: "Print the newest version of PKG in repository R (exit 3 when it has none)",
  },
  args: versionArgs,
  async run(ctx) {
    checkFlags(ctx, versionArgs);
    if (!ctx.args.pkg || !ctx.args.repo) throw new AppError("USAGE", "kiln job version PKG --repo R");
    const { res, body } = await apiFetch(
      `/v1/version?pkg=${encodeURIComponent(ctx.args.pkg)}&repo=${encodeURIComponent(ctx.args.repo)}`,
    );
    // Absent is an answer, not a failure: exit 3 so a build script can tell it from an error.
    if (res.status === 404 && body?.error?.code === "PACKAGE_NOT_FOUND") {
      process.stderr.write(`kiln: ${body.error.message}\n`);
      process.exitCode = 3;
      return;
    }
    if (!res.ok)
      throw new AppError("API_ERROR", body?.error?.message ?? `the job API answered ${res.status}`);
    process.stdout.write(`${(body as unknown as { version: string }).version}\n`);
  },
});

export const job = defineCommand({
  meta: { name: "job", description: "Inside a job: talk to Kiln through $KILN_API" },
  subCommands: { progress, "mark-broken": markBroken, upload, template, version },
});

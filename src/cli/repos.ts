import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { AppError, coerceError, errorFrom } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import type { Client } from "./client.ts";
import {
  checkFlags,
  clientArgs,
  clientOf,
  intArg,
  jobIdArg,
  print,
  repeated,
  safe,
  table,
} from "./common.ts";

/** A repository as the master's API returns it. */
interface Repo {
  name: string;
  format: "deb" | "rpm";
  project: string | null;
  public: boolean;
  dist: string | null;
  component: string | null;
  archs: string[];
  keep: number;
  generation: number;
  key: "master" | "imported";
  keyFingerprint: string | null;
  createdAt: number;
  createdBy: string | null;
  publishedAt: number | null;
  url: string;
  keyUrl: string;
  packages?: number;
  /** How to use it, from GET /api/v1/repos/NAME: the apt line or the .repo file, and the steps. */
  usage?: { sourcesLine?: string; repoFile?: string; keyUrl: string; steps: string[] };
}

/** A package in a repository, as the API returns it. */
interface Package {
  name: string;
  version: string;
  arch: string;
  size: number;
  sha256: string;
  path: string;
  job: number | null;
  publishedAt: number;
}

/** A publish, as the API returns it. */
interface Published {
  repo: string;
  generation: number;
  added: { name: string; version: string; arch: string }[];
  unchanged: { name: string; version: string; arch: string }[];
  removed: { name: string; version: string; arch: string }[];
}

const nameArg = { type: "positional", description: "Repository name", required: false } as const;
const repoName = (name: string | undefined) => {
  if (!name) throw new AppError("USAGE", "a repository name is required: see `kiln repo ls`");
  return name;
};
const path = (name: string, rest = "") => `/api/v1/repos/${encodeURIComponent(name)}${rest}`;

const addArgs = {
  ...clientArgs,
  name: nameArg,
  type: { type: "string", description: "Package format: deb or rpm", valueHint: "deb|rpm" },
  dist: { type: "string", description: "deb: the suite clients name (default stable)", valueHint: "DIST" },
  component: { type: "string", description: "deb: the component (default main)", valueHint: "COMPONENT" },
  arch: {
    type: "string",
    description: "Architectures it takes (default amd64,all for deb; x86_64,noarch for rpm)",
    valueHint: "A,B",
  },
  keep: {
    type: "string",
    description: "Versions kept of each package, newest first (default 3)",
    valueHint: "N",
  },
  project: {
    type: "string",
    description: "The project it belongs to (default: every project's)",
    valueHint: "P",
  },
  public: { type: "boolean", description: "Readable by anyone who reaches the master, without a token" },
} as const;
const add = defineCommand({
  meta: { name: "add", description: "Add a package repository (operator)" },
  args: addArgs,
  async run(ctx) {
    checkFlags(ctx, addArgs);
    const name = repoName(ctx.args.name);
    if (!ctx.args.type) throw new AppError("USAGE", "--type deb|rpm is required: the packages it holds");
    const r = await clientOf(ctx.args).request<Repo>("POST", "/api/v1/repos", {
      name,
      format: ctx.args.type,
      dist: ctx.args.dist,
      component: ctx.args.component,
      archs: ctx.args.arch?.split(",").map((a) => a.trim()),
      keep: intArg("keep", ctx.args.keep),
      project: ctx.args.project,
      public: ctx.args.public ? true : undefined,
    });
    print(
      ctx.args.json,
      r,
      () => `repository ${r.name} added: \`kiln repo show ${r.name}\` says how to use it`,
    );
  },
});

const ls = defineCommand({
  meta: { name: "ls", description: "List package repositories" },
  args: clientArgs,
  async run(ctx) {
    checkFlags(ctx, clientArgs);
    const rows = await clientOf(ctx.args).request<Repo[]>("GET", "/api/v1/repos");
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? "no repositories: add one with `kiln repo add NAME --type deb|rpm`"
        : table(
            ["NAME", "TYPE", "PROJECT", "PUBLIC", "ARCHS", "KEEP", "LAST PUBLISH"],
            rows.map((r) => [
              r.name,
              r.format,
              r.project ?? "(all)",
              r.public ? "yes" : "no",
              r.archs.join(","),
              r.keep,
              r.publishedAt ? new Date(r.publishedAt).toISOString() : "never",
            ]),
          ),
    );
  },
});

const show = defineCommand({
  meta: { name: "show", description: "Show a repository and how to use it (the apt line or the .repo file)" },
  args: { ...clientArgs, name: nameArg },
  async run(ctx) {
    checkFlags(ctx, { ...clientArgs, name: nameArg });
    const client = clientOf(ctx.args);
    const r = await client.request<Repo>("GET", path(repoName(ctx.args.name)));
    const how = r.usage as NonNullable<Repo["usage"]>;
    print(ctx.args.json, r, () =>
      [
        `repository ${r.name} (${r.format}${r.public ? ", public" : ""}${r.project ? `, project ${r.project}` : ""})`,
        ...(r.format === "deb" ? [`dist ${r.dist}, component ${r.component}`] : []),
        `architectures ${r.archs.join(", ")}; keeps the newest ${r.keep} versions of each package`,
        `${r.packages ?? 0} packages; ${r.publishedAt ? `last published ${new Date(r.publishedAt).toISOString()}` : "nothing published yet"}`,
        `signed with ${r.key === "imported" ? `the imported key ${r.keyFingerprint}` : "the master's own key"}; key at ${how.keyUrl}`,
        "",
        ...(how.sourcesLine
          ? ["apt:", `  ${how.sourcesLine}`]
          : [
              "dnf (.repo file):",
              ...(how.repoFile ?? "")
                .trimEnd()
                .split("\n")
                .map((l) => `  ${safe(l)}`),
            ]),
        "",
        "set-up:",
        ...how.steps.flatMap((s) => s.split("\n")).map((l) => `  ${safe(l)}`),
      ].join("\n"),
    );
  },
});

const rm = defineCommand({
  meta: { name: "rm", description: "Remove a repository and its files (operator)" },
  args: { ...clientArgs, name: nameArg },
  async run(ctx) {
    checkFlags(ctx, { ...clientArgs, name: nameArg });
    const name = repoName(ctx.args.name);
    const r = await clientOf(ctx.args).request<{ name: string }>("DELETE", path(name));
    print(ctx.args.json, r, () => `repository ${r.name} removed`);
  },
});

const packages = defineCommand({
  meta: { name: "packages", description: "List the packages a repository holds" },
  args: { ...clientArgs, name: nameArg },
  async run(ctx) {
    checkFlags(ctx, { ...clientArgs, name: nameArg });
    const rows = await clientOf(ctx.args).request<Package[]>(
      "GET",
      path(repoName(ctx.args.name), "/packages"),
    );
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? "no packages yet: publish with `kiln submit --repo NAME` or `kiln repo publish NAME JOB`"
        : table(
            ["PACKAGE", "VERSION", "ARCH", "SIZE", "JOB", "PUBLISHED"],
            rows.map((p) => [
              p.name,
              p.version,
              p.arch,
              formatSize(p.size),
              p.job,
              new Date(p.publishedAt).toISOString(),
            ]),
          ),
    );
  },
});

const keyArgs = {
  ...clientArgs,
  name: nameArg,
  import: { type: "string", description: "Sign with this secret key instead (operator)", valueHint: "FILE" },
} as const;
const key = defineCommand({
  meta: {
    name: "key",
    description: "Print a repository's public key, or import the secret key it signs with",
  },
  args: keyArgs,
  async run(ctx) {
    checkFlags(ctx, keyArgs);
    const name = repoName(ctx.args.name);
    const client = clientOf(ctx.args);
    if (ctx.args.import) {
      let bytes: Uint8Array;
      try {
        bytes = readFileSync(ctx.args.import);
      } catch (err) {
        throw new AppError("USAGE", `--import ${ctx.args.import}: ${coerceError(err).message}`);
      }
      const r = await request<{ fingerprint: string; uid: string }>(client, "PUT", path(name, "/key"), bytes);
      print(
        ctx.args.json,
        r,
        () => `repository ${name} is signed with ${r.fingerprint} (${safe(r.uid)}) from now on`,
      );
      return;
    }
    const res = await client.raw(path(name, "/key"));
    if (!res.ok) throw await errorFrom(res);
    const text = await res.text();
    print(ctx.args.json, { key: text }, () => text);
  },
});

// A request with a raw body (the key file); a refusal is read as the JSON client reads it.
async function request<T>(client: Client, method: string, p: string, body?: Uint8Array): Promise<T> {
  const res = await client.raw(p, { method, body, headers: { "content-type": "application/octet-stream" } });
  if (!res.ok) throw await errorFrom(res);
  return (await res.json()) as T;
}

const publishArgs = {
  ...clientArgs,
  name: nameArg,
  job: { type: "positional", description: "A succeeded job whose packages to publish", required: false },
  artifact: {
    type: "string",
    description: "Only this artifact (repeatable; default: every deb/rpm)",
    valueHint: "NAME",
  },
  force: { type: "boolean", description: "Publish even a package that is not newer than the repository's" },
} as const;
const publish = defineCommand({
  meta: { name: "publish", description: "Publish a succeeded job's deb/rpm artifacts into a repository" },
  args: publishArgs,
  async run(ctx) {
    checkFlags(ctx, publishArgs);
    const name = repoName(ctx.args.name);
    const job = jobIdArg(ctx.args.job);
    const artifacts = ctx.args.artifact === undefined ? undefined : repeated(ctx.rawArgs, "artifact");
    const r = await clientOf(ctx.args).request<Published>("POST", path(name, "/publish"), {
      job,
      artifacts,
      force: ctx.args.force ? true : undefined,
    });
    const list = (ps: Published["added"]) => ps.map((p) => `${p.name} ${p.version} (${p.arch})`).join(", ");
    print(ctx.args.json, r, () =>
      [
        r.added.length ? `published into ${r.repo}: ${list(r.added)}` : `nothing new for ${r.repo}`,
        ...(r.unchanged.length ? [`already there: ${list(r.unchanged)}`] : []),
        ...(r.removed.length ? [`dropped (keep): ${list(r.removed)}`] : []),
      ].join("\n"),
    );
  },
});

/** `kiln repo ...`: package repositories. */
export const repo = defineCommand({
  meta: { name: "repo", description: "Package repositories (deb, rpm) served by the master" },
  subCommands: { add, ls, show, rm, packages, key, publish },
});

import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { formatSize } from "../lib/size.ts";
import { checkFlags, clientArgs, clientOf, print, repeated, table } from "./common.ts";

interface TemplateView {
  name: string;
  hash: string;
  recipe: Record<string, unknown> & { kind: string };
  base: string | null;
  updatedAt: string;
  cachedOn: { worker: string; sizeBytes: number }[];
}

const list = (v: string | undefined) =>
  v
    ? v
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean)
    : [];

const addArgs = {
  ...clientArgs,
  name: { type: "positional", description: "Template name (what --root names)", required: false },
  debootstrap: {
    type: "string",
    description: "Build a Debian root of this suite with debootstrap",
    valueHint: "SUITE",
  },
  mirror: {
    type: "string",
    description: "Debian mirror (default http://deb.debian.org/debian)",
    valueHint: "URL",
  },
  variant: {
    type: "string",
    description: "debootstrap variant: minbase (default), buildd, fakechroot, -",
    valueHint: "V",
  },
  include: {
    type: "string",
    description: "Packages debootstrap includes, comma-separated",
    valueHint: "PKGS",
  },
  tarball: {
    type: "string",
    description: "A root filesystem tarball a job produced",
    valueHint: "JOB/ARTIFACT",
  },
  script: { type: "string", description: "Run this script as root on top of --base", valueHint: "FILE" },
  base: { type: "string", description: "The template --script builds on", valueHint: "NAME" },
  packages: {
    type: "string",
    description: "Packages to install on top, comma-separated (repeatable)",
    valueHint: "PKGS",
  },
  egress: {
    type: "string",
    description:
      "Hosts the --packages and --script steps may reach besides the tree's apt sources, comma-separated (repeatable)",
    valueHint: "HOST[:PORT]",
  },
} as const;

const add = defineCommand({
  meta: { name: "add", description: "Define (or redefine) a build-root template" },
  args: addArgs,
  async run(ctx) {
    checkFlags(ctx, addArgs);
    const a = ctx.args;
    if (!a.name)
      throw new AppError(
        "USAGE",
        "kiln template add NAME --debootstrap SUITE | --tarball JOB/ARTIFACT | --script FILE --base NAME",
      );
    const kinds = [a.debootstrap, a.tarball, a.script].filter((k) => k !== undefined);
    if (kinds.length !== 1)
      throw new AppError(
        "USAGE",
        "give exactly one of --debootstrap SUITE, --tarball JOB/ARTIFACT, --script FILE",
      );
    const packages = repeated(ctx.rawArgs, "packages").flatMap((p) => list(p));
    const egress = repeated(ctx.rawArgs, "egress").flatMap((e) => list(e));
    let recipe: Record<string, unknown>;
    if (a.debootstrap) {
      recipe = {
        kind: "debootstrap",
        suite: a.debootstrap,
        mirror: a.mirror ?? "http://deb.debian.org/debian",
        variant: a.variant ?? "minbase",
        include: list(a.include),
        packages,
      };
    } else if (a.tarball) {
      const m = /^(\d+)\/(.+)$/.exec(a.tarball);
      if (!m) throw new AppError("USAGE", `--tarball ${a.tarball}: use JOB/ARTIFACT, e.g. 42/rootfs.tar.gz`);
      recipe = { kind: "tarball", job: Number(m[1]), artifact: m[2], packages };
    } else {
      if (!a.base) throw new AppError("USAGE", "--script needs --base NAME: the template it runs on top of");
      let script: string;
      try {
        script = readFileSync(a.script!, "utf8");
      } catch (err) {
        throw new AppError("USAGE", `--script ${a.script}: ${(err as Error).message}`);
      }
      recipe = { kind: "script", base: a.base, script, packages };
    }
    if (egress.length) recipe.egress = egress;
    for (const [flag, kind] of [
      ["mirror", "debootstrap"],
      ["variant", "debootstrap"],
      ["include", "debootstrap"],
      ["base", "script"],
    ] as const) {
      if (a[flag] !== undefined && recipe.kind !== kind)
        throw new AppError("USAGE", `--${flag} goes with --${kind}`);
    }
    const res = await clientOf(a).request<TemplateView>("POST", "/api/v1/templates", {
      name: a.name,
      recipe,
    });
    print(
      a.json,
      res,
      () =>
        `template ${res.name} ${res.hash.slice(0, 12)}: built on first use, or now with \`kiln template build ${res.name}\``,
    );
  },
});

const ls = defineCommand({
  meta: { name: "ls", description: "List templates" },
  args: clientArgs,
  async run(ctx) {
    checkFlags(ctx, clientArgs);
    const rows = await clientOf(ctx.args).request<TemplateView[]>("GET", "/api/v1/templates");
    print(ctx.args.json, rows, () =>
      rows.length === 0
        ? "no templates: add one with `kiln template add NAME --debootstrap bookworm`"
        : table(
            ["NAME", "KIND", "HASH", "BASE", "CACHED ON"],
            rows.map((t) => [
              t.name,
              t.recipe.kind,
              t.hash.slice(0, 12),
              t.base,
              t.cachedOn.map((c) => c.worker).join(",") || null,
            ]),
          ),
    );
  },
});

const nameArgs = {
  ...clientArgs,
  name: { type: "positional", description: "Template name", required: false },
} as const;
const need = (n: string | undefined, what: string) => {
  if (!n) throw new AppError("USAGE", `a template name is required: kiln template ${what} NAME`);
  return encodeURIComponent(n);
};

const show = defineCommand({
  meta: { name: "show", description: "Show a template: recipe, hash, base, where it is cached" },
  args: nameArgs,
  async run(ctx) {
    checkFlags(ctx, nameArgs);
    const t = await clientOf(ctx.args).request<TemplateView>(
      "GET",
      `/api/v1/templates/${need(ctx.args.name, "show")}`,
    );
    print(ctx.args.json, t, () => {
      const r = { ...t.recipe } as Record<string, unknown>;
      const script = typeof r.script === "string" ? r.script : null;
      delete r.script;
      const lines = [
        `template:  ${t.name}`,
        `hash:      ${t.hash}`,
        `kind:      ${t.recipe.kind}`,
        ...Object.entries(r)
          .filter(([k, v]) => k !== "kind" && !(Array.isArray(v) && v.length === 0))
          .map(([k, v]) => `${`${k}:`.padEnd(11)}${Array.isArray(v) ? v.join(", ") : String(v)}`),
        `updated:   ${t.updatedAt}`,
        `cached on: ${t.cachedOn.map((c) => `${c.worker} (${formatSize(c.sizeBytes)})`).join(", ") || "no worker yet"}`,
      ];
      if (script) lines.push("script:", script.trimEnd());
      return lines.join("\n");
    });
  },
});

const buildArgs = {
  ...nameArgs,
  worker: { type: "string", description: "Build on this worker (repeatable; default all)", valueHint: "W" },
} as const;
const build = defineCommand({
  meta: {
    name: "build",
    description: "Build a template now on chosen workers (default: every connected one)",
  },
  args: buildArgs,
  async run(ctx) {
    checkFlags(ctx, buildArgs);
    const workers = repeated(ctx.rawArgs, "worker");
    const res = await clientOf(ctx.args).request<{ name: string; building: string[] }>(
      "POST",
      `/api/v1/templates/${need(ctx.args.name, "build")}/build`,
      workers.length ? { workers } : {},
    );
    print(
      ctx.args.json,
      res,
      () => `building ${res.name} on ${res.building.join(", ")}; see \`kiln template show ${res.name}\``,
    );
  },
});

const rm = defineCommand({
  meta: { name: "rm", description: "Remove a template (cached trees are evicted by the workers in time)" },
  args: nameArgs,
  async run(ctx) {
    checkFlags(ctx, nameArgs);
    const res = await clientOf(ctx.args).request("DELETE", `/api/v1/templates/${need(ctx.args.name, "rm")}`);
    print(ctx.args.json, res, () => `removed template ${ctx.args.name}`);
  },
});

export const template = defineCommand({
  meta: { name: "template", description: "Build-root templates: add, ls, show, build, rm" },
  subCommands: { add, ls, show, build, rm },
});

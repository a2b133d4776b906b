import type { z } from "zod";
import { AppError, coerceError } from "../lib/errors.ts";
import {
  execBytes,
  MAX_USE_REPOS,
  SPEC_LIMITS,
  SUBMIT_DEFAULTS,
  type SubmitOptions,
  type SubmitSchema,
} from "../protocol/job.ts";
import type { NewJob } from "../store/jobs.ts";
import { currentRecipe } from "../store/recipes.ts";
import type { MasterContext } from "./context.ts";
import type { RecipeDefinition } from "./recipes/definition.ts";
import { renderRecipe } from "./recipes/render.ts";
import { checkPublishable, visibleRepo } from "./repo-access.ts";
import { resolveTemplate } from "./templates.ts";

type SubmitBody = z.infer<typeof SubmitSchema>;

/**
 * Turns a submit request into the job to queue. A plain request runs its command; a recipe request is
 * rendered from the recipe's current version, with the request's options winning over the recipe's
 * `[submit]` table and that over the master's defaults (env is merged key by key, in the same order).
 * Every problem with the recipe or its values throws a 4xx here, before anything is written.
 */
export async function jobFromRequest(
  ctx: MasterContext,
  req: SubmitBody,
  submittedBy: string,
): Promise<NewJob> {
  let options: SubmitOptions = req;
  let command = req.command ?? [];
  let env = req.env ?? {};
  let name = req.name ?? command.join(" ").slice(0, 80);
  let recipe: Pick<NewJob, "recipe" | "recipeVersion" | "recipeVars"> = {};
  // Only a recipe brings a setup: recipes are added by operators, and a plain submit has no such field.
  let setup: string | null = null;
  if (req.recipe) {
    const row = await currentRecipe(ctx.store.db, req.recipe);
    if (!row) {
      throw new AppError(
        "RECIPE_NOT_FOUND",
        `no recipe ${req.recipe}: list them with \`kiln recipe ls\`, add one with \`kiln recipe add\``,
        { status: 404 },
      );
    }
    const def = row.definition as RecipeDefinition;
    const rendered = renderRecipe(row.name, def, req.vars ?? {});
    options = { ...def.submit, ...withoutUndefined(req) };
    // The repositories a recipe installs from are part of what it needs, so a submit's own add to them.
    options.useRepos = [...(def.submit.useRepos ?? []), ...(req.useRepos ?? [])];
    command = rendered.command;
    setup = rendered.setup;
    // The variables come last: a KILN_VAR_* from --env must not replace a checked value.
    env = { ...def.submit.env, ...req.env, ...rendered.env };
    name = req.name ?? `${row.name} v${row.version}${describeVars(rendered.vars)}`.slice(0, 80);
    recipe = { recipe: row.name, recipeVersion: row.version, recipeVars: rendered.vars };
  }
  const secrets = req.secrets ?? {};
  const both = Object.keys(secrets).filter((k) => k in env);
  if (both.length) {
    throw new AppError(
      "INVALID_REQUEST",
      `${both.join(", ")} is given both as --env and as --secret: give each name once`,
    );
  }
  const bytes = execBytes(setup === null ? command : [...command, setup], { ...env, ...secrets });
  if (bytes > SPEC_LIMITS.execBytes) {
    throw new AppError(
      "SPEC_TOO_LARGE",
      `the command and environment take ${bytes} bytes, more than the ${SPEC_LIMITS.execBytes} a job may have: pass large data as a file (kiln submit --script, or a job artifact)`,
    );
  }
  const root = options.root ?? SUBMIT_DEFAULTS.root;
  // A template must exist when the job is queued; it is resolved again (to its current tree) at assignment.
  if (root !== "host") await resolveTemplate(ctx.store.db, root);
  if (setup !== null && root === "host") {
    throw new AppError(
      "RECIPE_SETUP_ROOT",
      `recipe ${req.recipe} has a setup, which installs into a writable overlay of a template root: submit with --root TEMPLATE (see \`kiln template ls\`)`,
      { status: 400 },
    );
  }
  if (options.writableRoot && root === "host") {
    throw new AppError(
      "INVALID_REQUEST",
      "--writable-root needs --root TEMPLATE: the host root is never writable",
    );
  }
  const project = options.project ?? SUBMIT_DEFAULTS.project;
  const useRepos = await checkUsable(ctx, options.useRepos ?? [], project);
  if (options.repo) await checkPublishable(ctx, options.repo, project);
  else if (options.repoForce)
    throw new AppError("INVALID_REQUEST", "--force is for publishing: give it with --repo NAME");
  return {
    name,
    project,
    channel: options.channel ?? SUBMIT_DEFAULTS.channel,
    arch: options.arch ?? null,
    priority: options.priority ?? SUBMIT_DEFAULTS.priority,
    command,
    env,
    timeoutMs: options.timeoutMs ?? ctx.cfg.master.default_timeout,
    memoryBytes: options.memoryBytes ?? null,
    cpus: options.cpus ?? null,
    pids: options.pids ?? null,
    scratchBytes: options.scratchBytes ?? null,
    root,
    // A setup writes to /, and so does Kiln when it writes the apt or dnf sources of the repositories the
    // job uses: the root is then the template's overlay on the job's scratch, whatever was asked.
    writableRoot:
      setup !== null || (useRepos.length > 0 && root !== "host") || (options.writableRoot ?? false),
    setup,
    needs: options.needs ?? [],
    egress: options.egress ?? [],
    repo: options.repo ?? null,
    repoForce: options.repoForce ?? false,
    useRepos,
    retries: options.retries ?? ctx.cfg.master.default_retries,
    submittedBy,
    ...recipe,
    secrets: Object.keys(secrets).length ? secrets : null,
  };
}

/**
 * The repositories a job of `project` uses, each named once, in the order given: refused (400, so the CLI
 * exits 2) when one does not exist or is one the project may not read (another project's, not public),
 * as `--repo` is; the job's credential will reach exactly these.
 */
async function checkUsable(ctx: MasterContext, names: string[], project: string): Promise<string[]> {
  const unique = [...new Set(names)];
  if (unique.length > MAX_USE_REPOS)
    throw new AppError(
      "INVALID_REQUEST",
      `--use-repo: at most ${MAX_USE_REPOS} repositories per job (with the recipe's use_repos), not ${unique.length}`,
    );
  for (const name of unique) {
    try {
      await visibleRepo(ctx, name, project, 400);
    } catch (err) {
      const e = coerceError(err);
      if (!(e instanceof AppError) || e.code !== "REPO_NOT_FOUND") throw e;
      throw new AppError(
        "REPO_NOT_FOUND",
        `--use-repo ${name}: no repository ${name} that jobs of project ${project} may read (another project's repository is readable only when it is public): see \`kiln repo ls\``,
        // The status visibleRepo gave: 400, the name being part of the request.
        { status: e.status, cause: e },
      );
    }
  }
  return unique;
}

function withoutUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** " url=..., dist=..." for a job's name, so `kiln jobs` tells recipe runs apart. */
function describeVars(vars: Record<string, string>): string {
  const parts = Object.entries(vars).map(([k, v]) => `${k}=${v}`);
  return parts.length ? ` ${parts.join(" ")}` : "";
}

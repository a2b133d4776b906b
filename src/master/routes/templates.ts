import { Hono } from "hono";
import { AppError } from "../../lib/errors.ts";
import { checkName } from "../../lib/names.ts";
import { TemplatesApi } from "../../protocol/api.ts";
import { templateHash } from "../../protocol/template.ts";
import type { TemplateRow } from "../../store/schema.ts";
import {
  deleteTemplate,
  dependents,
  getTemplate,
  listTemplates,
  putTemplate,
} from "../../store/templates.ts";
import { type ApiEnv, guardFor } from "../access.ts";
import { audit } from "../audit.ts";
import type { MasterContext } from "../context.ts";
import { baseOf, resolveTemplate } from "../templates.ts";
import { jsonBody } from "./json-body.ts";

/** A template as the API shows it, with the workers that have its current tree cached. */
function templateView(ctx: MasterContext, row: TemplateRow, hash = row.hash) {
  const cachedOn = [...ctx.registry.workers.values()]
    .filter((w) => w.templates.some((t) => t.hash === hash))
    .map((w) => ({ worker: w.name, sizeBytes: w.templates.find((t) => t.hash === hash)!.sizeBytes }));
  return {
    name: row.name,
    hash,
    recipe: row.recipe,
    base: row.base,
    createdAt: new Date(row.createdAt).toISOString(),
    updatedAt: new Date(row.updatedAt).toISOString(),
    cachedOn,
  };
}

/** Build-root templates: add (or replace), list, show, build now on chosen workers, remove. */
export function templateRoutes(ctx: MasterContext) {
  const app = new Hono<ApiEnv>();
  const guard = guardFor(ctx);
  const reader = guard({ who: "client", role: "viewer", scope: "shared" });
  const operator = guard({ who: "client", role: "operator", scope: "global" });

  app.post("/templates", operator, async (c) => {
    const caller = c.var.caller;
    const req = await jsonBody(c, TemplatesApi.add, TemplatesApi.maxBytes);
    const name = req.name;
    if (name === "host")
      throw new AppError("INVALID_NAME", '"host" means the host root; pick another template name');
    const baseName = baseOf(req.recipe);
    const base = baseName ? await resolveTemplate(ctx.store.db, baseName, [name]) : null;
    const hash = templateHash(req.recipe, base?.hash ?? null);
    const row = await putTemplate(ctx.store, {
      name,
      hash,
      recipe: req.recipe,
      base: baseName,
      createdBy: caller.name,
    });
    await audit(ctx, caller, "template.add", `template/${name}`, { hash, base: baseName });
    return c.json(templateView(ctx, row), 201);
  });

  app.get("/templates", reader, async (c) => {
    const rows = await listTemplates(ctx.store.db);
    return c.json(
      await Promise.all(
        rows.map(async (r) => templateView(ctx, r, (await resolveTemplate(ctx.store.db, r.name)).hash)),
      ),
    );
  });

  app.get("/templates/:name", reader, async (c) => {
    const name = checkName("template", c.req.param("name"));
    const spec = await resolveTemplate(ctx.store.db, name);
    return c.json({ ...templateView(ctx, (await getTemplate(ctx.store.db, name))!, spec.hash), spec });
  });

  app.post("/templates/:name/build", operator, async (c) => {
    const name = checkName("template", c.req.param("name"));
    const req = await jsonBody(c, TemplatesApi.build);
    const spec = await resolveTemplate(ctx.store.db, name);
    const targets = req.workers?.length
      ? req.workers.map((w) => {
          const live = ctx.registry.workers.get(w);
          if (!live)
            throw new AppError("WORKER_OFFLINE", `worker ${w} is not connected: see \`kiln workers\``, {
              status: 409,
            });
          return live;
        })
      : [...ctx.registry.workers.values()];
    if (targets.length === 0)
      throw new AppError("NO_WORKERS", "no worker is connected to build it on", { status: 409 });
    for (const w of targets) w.send({ type: "template.build", template: spec });
    await audit(ctx, c.var.caller, "template.build", `template/${name}`, {
      hash: spec.hash,
      workers: targets.map((w) => w.name),
    });
    return c.json({ name, hash: spec.hash, building: targets.map((w) => w.name) }, 202);
  });

  app.delete("/templates/:name", operator, async (c) => {
    const name = checkName("template", c.req.param("name"));
    const users = await dependents(ctx.store.db, name);
    if (users.length) {
      throw new AppError(
        "TEMPLATE_IN_USE",
        `template ${name} is the base of ${users.join(", ")}: remove those first`,
        { status: 409 },
      );
    }
    const row = await deleteTemplate(ctx.store, name);
    if (!row)
      throw new AppError("TEMPLATE_NOT_FOUND", `no template ${name}: see \`kiln template ls\``, {
        status: 404,
      });
    await audit(ctx, c.var.caller, "template.rm", `template/${name}`);
    return c.json({ name, removed: true });
  });

  return app;
}

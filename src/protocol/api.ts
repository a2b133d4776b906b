import { z } from "zod";
import { artifactNameSchema, nameSchema } from "../lib/names.ts";
import { JOB_STATES, SubmitSchema } from "./job.ts";
import { TemplateRecipeSchema } from "./template.ts";

/*
 * The bodies and queries of the master's API, one group per route family, so the routes, the CLI and a
 * future OpenAPI document read the same definitions. Field names are those of the API (the CLI maps them
 * to its flags); every name that becomes a key or a path uses the rules of lib/names.ts. The TLS routes,
 * which live apart from the master's router, keep theirs in src/tls/enroll.ts.
 *
 * `maxBytes` is the most a family's JSON body may hold when it needs more than the 1 MiB default
 * (lib/body.ts MAX_JSON_BODY): a recipe file of 2 MiB or a template script of 1 MiB, JSON-escaped.
 */

/** POST /api/v1/jobs and GET /api/v1/jobs. */
export const JobsApi = {
  submit: SubmitSchema,
  list: z.object({
    state: z.enum(JOB_STATES).optional(),
    project: nameSchema().optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
    before: z.coerce.number().int().optional(),
  }),
};

const reason = z.string().min(1, "a reason is required").max(500, "a reason is at most 500 characters");

/** Workers, slots and tokens under /api/v1/admin/. */
export const AdminApi = {
  /** POST /admin/workers/NAME/hold and /admin/workers/NAME/slots/SLOT/hold. */
  hold: z.strictObject({ reason }),
  /** POST /admin/tokens. */
  createToken: z.strictObject({
    role: z.enum(["admin", "operator", "submitter", "viewer", "worker"]),
    name: nameSchema().optional(),
    project: nameSchema().optional(),
    ttl: z.string().max(100).optional(),
  }),
};

/** POST /api/v1/recipes. */
export const RecipesApi = {
  maxBytes: 5 << 20,
  add: z.strictObject({
    name: nameSchema(),
    source: z.string().max(2 << 20, "a recipe file is at most 2 MiB"),
    // Only for error messages: the file the CLI read, so "unknown key" can name it.
    file: z.string().max(500).optional(),
  }),
};

/** POST /api/v1/templates and /api/v1/templates/NAME/build. */
export const TemplatesApi = {
  maxBytes: 3 << 20,
  add: z.strictObject({ name: nameSchema(), recipe: TemplateRecipeSchema }),
  build: z.strictObject({ workers: z.array(nameSchema()).max(1000).optional() }),
};

/** POST /api/v1/releases. */
export const ReleasesApi = {
  promote: z.strictObject({
    job: z.number().int().positive(),
    artifact: artifactNameSchema(),
    tag: nameSchema(),
  }),
};

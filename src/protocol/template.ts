import { z } from "zod";
import { isArtifactName, isName } from "../lib/names.ts";

/*
 * Build-root templates: a recipe that makes a root filesystem tree, identified by the hash of its recipe
 * and of its base's hash, so two workers (or two masters) agree on what "bookworm-build" is without
 * talking, and a changed recipe is a new tree.
 */

const PKG = /^[a-z0-9][a-z0-9+.-]{0,99}$/;
const packages = z
  .array(z.string().regex(PKG, "package names are lowercase letters, digits, '+', '.', '-'"))
  .max(500);

// Hosts a recipe's package and script steps may reach besides those the tree's apt sources name; optional,
// so recipes without it keep their hash.
const egress = z
  .array(z.string().regex(/^[A-Za-z0-9.-]+(:\d{1,5})?$/, "egress must be HOST or HOST:PORT"))
  .max(64)
  .optional();

/** How a template is built: debootstrap a suite, run a script on a base, or unpack a job's artifact (tar). */
export const TemplateRecipeSchema = z.discriminatedUnion("kind", [
  z
    .object({
      kind: z.literal("debootstrap"),
      suite: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, "suite must be a Debian suite name like bookworm"),
      mirror: z.string().regex(/^https?:\/\/[A-Za-z0-9.:/_~+-]+$/, "mirror must be an http(s) URL"),
      variant: z.enum(["minbase", "buildd", "fakechroot", "-"]),
      include: packages,
      packages,
      egress,
    })
    .strict(),
  z
    .object({
      kind: z.literal("script"),
      base: z.string().refine(isName, "base must be a template name"),
      script: z
        .string()
        .min(1)
        .max(1 << 20),
      packages,
      egress,
    })
    .strict(),
  z
    .object({
      kind: z.literal("tarball"),
      job: z.number().int().positive(),
      artifact: z.string().refine(isArtifactName, "artifact must be an artifact name (dir/file allowed)"),
      packages,
      egress,
    })
    .strict(),
]);
/** A checked TemplateRecipeSchema value. */
export type TemplateRecipe = z.infer<typeof TemplateRecipeSchema>;

/** What a worker needs to build or find a template: its recipe, hash, and its base's spec. */
export interface TemplateSpec {
  name: string;
  hash: string;
  recipe: TemplateRecipe;
  base: TemplateSpec | null;
}

/** Validates a TemplateSpec from the wire, its chain of bases included. */
export const TemplateSpecSchema: z.ZodType<TemplateSpec> = z.lazy(() =>
  z.object({
    name: z.string(),
    hash: z.string().regex(/^[0-9a-f]{64}$/),
    recipe: TemplateRecipeSchema,
    base: TemplateSpecSchema.nullable(),
  }),
);

/** The identity of a template: sha256 over its recipe (keys sorted) and its base's hash. */
export function templateHash(recipe: TemplateRecipe, baseHash: string | null): string {
  const canonical = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(canonical)
      : v && typeof v === "object"
        ? Object.fromEntries(
            Object.keys(v)
              .sort()
              .map((k) => [k, canonical((v as Record<string, unknown>)[k])]),
          )
        : v;
  const h = new Bun.CryptoHasher("sha256");
  h.update(JSON.stringify({ recipe: canonical(recipe), base: baseHash }));
  return h.digest("hex");
}

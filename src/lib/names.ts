import { z } from "zod";
import { badRequest } from "./errors.ts";

/*
 * Every name a client sends passes through here before it is stored, used as a key or joined into a path.
 * Two rules, one for each job:
 *   - a name (project, channel, arch, worker, slot, resource, template, recipe, release tag, repo, token
 *     name): 1-63 lowercase letters, digits, ".", "_" or "-", a letter or digit first, no "..". It forbids
 *     separators, a leading dot and anything a shell or a path join could interpret.
 *   - an artifact name: a file a job left under $KILN_OUT, so one or more components joined by "/", each a
 *     letter or digit first, then letters, digits and . _ + - (the native collector,
 *     src/sandbox/helper/collect.c, applies the same rule). No component is empty, "." or "..", no name
 *     starts with "/" or holds a control character.
 * Both are checked with the field's name as the user knows it, so the refusal says which value was wrong.
 */

const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const NAME_RULE = `1-63 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit`;

/** True when `value` is a valid name. */
export const isName = (value: string) => NAME.test(value) && !value.includes("..");

/** Says what is wrong with `value` as a name, or null when it is a valid one. */
export const nameProblem = (value: string): string | null =>
  isName(value) ? null : `${JSON.stringify(value.slice(0, 100))} is not a valid name: use ${NAME_RULE}`;

/** Returns `value` when it is a valid name, else throws 400 INVALID_NAME naming the field and the rule. */
export function checkName(field: string, value: string): string {
  const problem = nameProblem(value);
  if (problem) throw badRequest(`${field} ${problem}`, "INVALID_NAME");
  return value;
}

/**
 * A zod string that must be a valid name, for request schemas; the refusal states the rule and carries
 * the code INVALID_NAME (readJson in body.ts answers with it).
 */
export const nameSchema = () =>
  z.string().refine(isName, { message: `must be ${NAME_RULE}`, params: { code: "INVALID_NAME" } });

/** A zod string that must be a valid artifact name (see artifactNameProblem), refused as INVALID_NAME. */
export const artifactNameSchema = () =>
  z.string().superRefine((v, ctx) => {
    const problem = artifactNameProblem(v);
    if (problem) ctx.addIssue({ code: "custom", message: problem, params: { code: "INVALID_NAME" } });
  });

const COMPONENT = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$/;
// Deeper than the collector goes (32 levels of directories below $KILN_OUT), with room to spare.
const MAX_COMPONENTS = 40;
const MAX_LENGTH = 1024;

/** Says what is wrong with `name` as an artifact name, or null when it is a valid one. */
export function artifactNameProblem(name: string): string | null {
  if (name.length === 0) return "an artifact name cannot be empty";
  if (name.length > MAX_LENGTH) return `an artifact name is at most ${MAX_LENGTH} characters`;
  const parts = name.split("/");
  if (parts.length > MAX_COMPONENTS) return `an artifact name has at most ${MAX_COMPONENTS} parts`;
  for (const p of parts) {
    if (!COMPONENT.test(p))
      return `each part of an artifact name (between "/") starts with a letter or digit and holds only letters, digits, '.', '_', '+' and '-'`;
  }
  return null;
}

/** True when `name` is a valid artifact name (see artifactNameProblem). */
export const isArtifactName = (name: string) => artifactNameProblem(name) === null;

/** Returns `name` when it is a valid artifact name, else throws 400 INVALID_NAME saying why. */
export function checkArtifactName(name: string): string {
  const problem = artifactNameProblem(name);
  if (problem)
    throw badRequest(
      `${JSON.stringify(name.slice(0, 200))} is not an artifact name: ${problem}`,
      "INVALID_NAME",
    );
  return name;
}

/** The file beside every release's own file (see master/releases.ts); no artifact may be released as it. */
export const RELEASE_SUMS = "SHA256SUMS";

/**
 * Returns `name` when the artifact may become a release: a valid artifact name whose file (its last part)
 * is not SHA256SUMS in any case, which would overwrite or pass for the release's checksum file.
 */
export function checkReleaseArtifact(name: string): string {
  checkArtifactName(name);
  const file = name.split("/").pop()!;
  if (file.toUpperCase() === RELEASE_SUMS)
    throw badRequest(
      `artifact ${name} cannot be released: every release holds its own ${RELEASE_SUMS}, so a file of that name would stand for it; rename the file in the job`,
      "INVALID_NAME",
    );
  return name;
}

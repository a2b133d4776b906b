/*
 * Artifact names, shared by the worker (collection, uploads, delivery), the master (what it stores and
 * serves) and the CLI. A name is one or more components joined by "/", for files a job left in
 * subdirectories of $KILN_OUT. Each component follows the same rule, which the native collector
 * (src/sandbox/helper/collect.c) applies too: a letter or digit first, then letters, digits and . _ + -.
 * So no component is empty, "." or "..", and no name starts with "/" or holds a control character.
 */

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

import { badRequest } from "./errors.ts";

/*
 * Every name a client sends (project, channel, worker, slot, template, recipe, repo) passes through here
 * before it is stored or used in a path. The pattern forbids separators, dots at the start and anything a
 * shell or a path join could interpret.
 */
const NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

/** Returns `value` when it is a valid name, else throws a 400 naming the field and the rule. */
export function checkName(field: string, value: string): string {
  if (!NAME.test(value) || value.includes("..")) {
    throw badRequest(
      `${field} "${value}" is not a valid name: use 1-63 lowercase letters, digits, ".", "_" or "-", starting with a letter or digit`,
      "INVALID_NAME",
    );
  }
  return value;
}

/** True when `value` is a valid name. */
export const isName = (value: string) => NAME.test(value) && !value.includes("..");

import type { ArgDef, CommandDef } from "citty";

/*
 * Help text, written here rather than by citty: it names the whole command (`kiln token create`), shows
 * positional arguments as required unless they are optional ([MSG]), single-letter flags as `-n`, and
 * what comes after `--` for the commands that take a command line.
 */

/** What follows the flags of a command, where its positionals do not say it all. */
const TRAILING: Record<string, string> = {
  submit: "[-- CMD [ARG...]]",
};

const resolveValue = async <T>(
  v: T | (() => T | Promise<T>) | Promise<T> | undefined,
): Promise<T | undefined> => (typeof v === "function" ? await (v as () => T | Promise<T>)() : await v);

/** The help for `cmd`, reached by the words `path` after `kiln`. */
export async function renderHelp(cmd: CommandDef, path: string[], version?: string): Promise<string> {
  const meta = (await resolveValue(cmd.meta)) ?? {};
  const args = ((await resolveValue(cmd.args)) ?? {}) as Record<string, ArgDef>;
  const subs = (await resolveValue(cmd.subCommands)) as Record<string, CommandDef> | undefined;
  const name = ["kiln", ...path].join(" ");
  const out: string[] = [];
  out.push(`${meta.description ?? ""}${version ? ` (kiln ${version})` : ""}`, "");

  const positionals = Object.entries(args).filter(([, a]) => a.type === "positional");
  const flags = Object.entries(args).filter(([, a]) => a.type !== "positional");
  const shownPositionals = positionals.map(([k, a]) => {
    const hint = (a as { valueHint?: string }).valueHint;
    return hint?.startsWith("[") ? hint : k.toUpperCase();
  });
  const usage = [name];
  // A group that also runs on its own (`kiln workers`) takes its command optionally.
  if (subs) usage.push(cmd.run ? "[COMMAND]" : "COMMAND");
  if (flags.length) usage.push("[FLAGS]");
  usage.push(...shownPositionals);
  const trailing = TRAILING[path.join(" ")];
  if (trailing) usage.push(trailing);
  out.push(`Usage: ${usage.join(" ")}`);

  if (subs) {
    out.push("", "Commands:");
    const rows: [string, string][] = [];
    for (const [k, c] of Object.entries(subs)) {
      const m = (await resolveValue(c.meta)) ?? {};
      if (m.hidden) continue;
      rows.push([k, m.description ?? ""]);
    }
    out.push(...columns(rows));
  }
  if (positionals.length) {
    out.push("", "Arguments:");
    out.push(...columns(positionals.map(([k, a], i) => [shownPositionals[i] ?? k, a.description ?? ""])));
  }
  const flagRows: [string, string][] = flags.map(([k, a]) => {
    const alias = (a as { alias?: string | string[] }).alias;
    const aliases = (Array.isArray(alias) ? alias : alias ? [alias] : []).map((x) => `-${x}`);
    const long = k.length === 1 ? `-${k}` : `--${k}`;
    const hint = a.type === "boolean" ? "" : ` ${(a as { valueHint?: string }).valueHint ?? "VALUE"}`;
    return [[...aliases, long].join(", ") + hint, a.description ?? ""];
  });
  if (version) flagRows.push(["--version", "Print the version and exit"]);
  flagRows.push(["-h, --help", "Show this help"]);
  out.push("", "Flags:", ...columns(flagRows));
  if (subs) out.push("", `Run \`${name} COMMAND --help\` for a command's own flags.`);
  return `${out.join("\n")}\n`;
}

function columns(rows: [string, string][]): string[] {
  const w = Math.max(...rows.map(([a]) => a.length));
  return rows.map(([a, b]) => `  ${a.padEnd(w)}  ${b}`.trimEnd());
}

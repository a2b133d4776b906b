#!/usr/bin/env bun
import { type CommandDef, defineCommand, runCommand } from "citty";
import { artifacts, download } from "./cli/artifacts.ts";
import { audit } from "./cli/audit.ts";
import { renderHelp } from "./cli/help.ts";
import { job } from "./cli/job-control.ts";
import { cancel, jobs, logs, retry, show } from "./cli/jobs.ts";
import { rebuild } from "./cli/rebuild.ts";
import { recipe } from "./cli/recipes.ts";
import { promote, releases } from "./cli/releases.ts";
import { repo } from "./cli/repos.ts";
import { master, up, worker } from "./cli/roles.ts";
import { submit } from "./cli/submit.ts";
import { template } from "./cli/templates.ts";
import { token } from "./cli/tokens.ts";
import { drain, hold, release, workers } from "./cli/workers.ts";
import { AppError, coerceError } from "./lib/errors.ts";
import { VERSION } from "./version.ts";

const main = defineCommand({
  meta: { name: "kiln", version: VERSION, description: "A self-hosted build farm in one file" },
  subCommands: {
    master,
    worker,
    up,
    submit,
    jobs,
    show,
    logs,
    cancel,
    retry,
    rebuild,
    artifacts,
    download,
    promote,
    releases,
    repo,
    workers,
    drain,
    hold,
    release,
    token,
    audit,
    recipe,
    template,
    job,
  },
});

/** Finds the (sub)command that `argv` names and the words that led there, for --help on any of them. */
async function resolve(argv: string[]): Promise<{ cmd: CommandDef; path: string[] }> {
  let cmd: CommandDef = main as CommandDef;
  const path: string[] = [];
  for (const word of argv) {
    if (word.startsWith("-")) break;
    const subs = (typeof cmd.subCommands === "function" ? await cmd.subCommands() : await cmd.subCommands) as
      | Record<string, CommandDef>
      | undefined;
    if (!subs?.[word]) break;
    path.push(word);
    cmd = subs[word]!;
  }
  return { cmd, path };
}

async function run(argv: string[]) {
  const dash = argv.indexOf("--");
  const flags = dash >= 0 ? argv.slice(0, dash) : argv;
  const { cmd, path } = await resolve(argv);
  // Only `kiln --version` itself: a subcommand may have its own --version (`kiln recipe show --version N`).
  if (cmd === main && (flags.includes("--version") || (flags.length === 1 && flags[0] === "-v"))) {
    process.stdout.write(`kiln ${VERSION} (bun ${Bun.version}, ${process.platform}/${process.arch})\n`);
    return;
  }
  const help = await renderHelp(cmd, path, cmd === main ? VERSION : undefined);
  if (flags.includes("--help") || flags.includes("-h")) {
    process.stdout.write(help);
    return;
  }
  // A command group without its command (bare `kiln`, `kiln token`) is a usage error: help on stderr, 2.
  if (cmd.subCommands && !cmd.run && flags.length === path.length) {
    process.stderr.write(help);
    process.exit(2);
  }
  const first = argv[0]!;
  const subs = main.subCommands as Record<string, unknown>;
  if (!first.startsWith("-") && !subs[first]) {
    throw new AppError("USAGE", `unknown command "${first}": see \`kiln --help\``);
  }
  await runCommand(main, { rawArgs: argv });
}

/**
 * Usage errors exit 2 wherever they are caught: by the command line (USAGE) or by the master, which
 * answers a request it cannot take with 400 (or 413 for one too large).
 */
function isUsage(e: Error): boolean {
  return (
    e instanceof AppError && (e.code === "USAGE" || (e.remote && (e.status === 400 || e.status === 413)))
  );
}

try {
  await run(process.argv.slice(2));
} catch (err) {
  const e = coerceError(err);
  const msg = e instanceof AppError ? e.message : e.message.replace(/^Unknown command/, "unknown command");
  process.stderr.write(`kiln: ${msg}\n`);
  if (!(e instanceof AppError) && process.env.KILN_DEBUG) process.stderr.write(`${e.stack}\n`);
  process.exit(isUsage(e) ? 2 : 1);
}

#!/usr/bin/env bun
import { type CommandDef, defineCommand, renderUsage, runCommand } from "citty";
import { artifacts, download } from "./cli/artifacts.ts";
import { job } from "./cli/job-control.ts";
import { cancel, jobs, logs, retry, show, submit } from "./cli/jobs.ts";
import { recipe } from "./cli/recipes.ts";
import { master, up, worker } from "./cli/roles.ts";
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
    artifacts,
    download,
    workers,
    drain,
    hold,
    release,
    token,
    recipe,
    template,
    job,
  },
});

/** Finds the (sub)command that `argv` names, for --help on any of them. */
async function resolve(argv: string[]): Promise<{ cmd: CommandDef; parent?: CommandDef }> {
  let cmd: CommandDef = main as CommandDef;
  let parent: CommandDef | undefined;
  for (const word of argv) {
    if (word.startsWith("-")) break;
    const subs = (typeof cmd.subCommands === "function" ? await cmd.subCommands() : await cmd.subCommands) as
      | Record<string, CommandDef>
      | undefined;
    if (!subs?.[word]) break;
    parent = cmd;
    cmd = subs[word]!;
  }
  return { cmd, parent };
}

async function run(argv: string[]) {
  const dash = argv.indexOf("--");
  const flags = dash >= 0 ? argv.slice(0, dash) : argv;
  const { cmd, parent } = await resolve(argv);
  // Only `kiln --version` itself: a subcommand may have its own --version (`kiln recipe show --version N`).
  if (cmd === main && (flags.includes("--version") || (flags.length === 1 && flags[0] === "-v"))) {
    process.stdout.write(`kiln ${VERSION} (bun ${Bun.version}, ${process.platform}/${process.arch})\n`);
    return;
  }
  if (
    flags.includes("--help") ||
    flags.includes("-h") ||
    argv.length === 0 ||
    (cmd.subCommands && !cmd.run && flags.length <= (parent ? 1 : 0) + 0)
  ) {
    const usage = await renderUsage(cmd, parent);
    process.stdout.write(`${process.stdout.isTTY ? usage : usage.replace(/\x1b\[[0-9;]*m/g, "")}\n`);
    return;
  }
  const first = argv[0]!;
  const subs = main.subCommands as Record<string, unknown>;
  if (!first.startsWith("-") && !subs[first]) {
    throw new AppError("USAGE", `unknown command "${first}": see \`kiln --help\``);
  }
  await runCommand(main, { rawArgs: argv });
}

try {
  await run(process.argv.slice(2));
} catch (err) {
  const e = coerceError(err);
  const msg = e instanceof AppError ? e.message : e.message.replace(/^Unknown command/, "unknown command");
  process.stderr.write(`kiln: ${msg}\n`);
  if (!(e instanceof AppError) && process.env.KILN_DEBUG) process.stderr.write(`${e.stack}\n`);
  process.exit(e instanceof AppError && e.code === "USAGE" ? 2 : 1);
}

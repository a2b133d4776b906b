import type { RawExit } from "../runner/contract.ts";

/**
 * Parses one status line of the launcher (see src/sandbox/helper/README.md). A failed exec is the job's
 * own mistake (a command that does not exist, a PATH that finds nothing): it ends like a shell's, with
 * 127 and the reason for the job's log (`note`). Any other set-up failure is the slot's. A `warning`
 * line is for the worker's log. `setup PID` says a job's setup started; `setup-failed ...` ends a job whose
 * setup failed (exit, signal or exec), before its command ran.
 */
export function parseStatus(
  line: string,
): { ready: number } | { setup: number } | { exit: RawExit; note?: string } | { warning: string } | null {
  const m = /^(ready|setup|setup-failed|exit|signal|error|warning) (.*)$/.exec(line.trim());
  if (!m) return null;
  if (m[1] === "ready") return { ready: Number(m[2]) };
  if (m[1] === "setup") return { setup: Number(m[2]) };
  if (m[1] === "setup-failed") {
    const how = /^(exit|signal) (\d+)$/.exec(m[2]!);
    const code = how?.[1] === "exit" ? Number(how[2]) : null;
    const message = !how
      ? `the setup could not start: ${m[2]!.replace(/^exec: /, "")}`
      : how[1] === "exit"
        ? `the setup exited with status ${how[2]}`
        : `the setup was killed by signal ${how[2]}`;
    return {
      exit: { kind: "setup", message, code },
      note: `kiln: ${message}; the job's command did not run\n`,
    };
  }
  if (m[1] === "warning") return { warning: m[2]! };
  if (m[1] === "exit") return { exit: { kind: "exit", code: Number(m[2]) } };
  if (m[1] === "signal") return { exit: { kind: "signal", signal: Number(m[2]) } };
  const exec = /^exec: (.*)$/.exec(m[2]!);
  if (exec)
    return { exit: { kind: "exit", code: 127 }, note: `kiln: cannot run the job's command: ${exec[1]}\n` };
  return { exit: { kind: "sandbox", message: `sandbox set-up failed at ${m[2]}`, slotFault: true } };
}

import type { RawExit } from "../worker/runner.ts";

/** Parses one status line of the launcher (see src/sandbox/helper/README.md). */
export function parseStatus(line: string): { ready: number } | { exit: RawExit } | null {
  const m = /^(ready|exit|signal|error) (.*)$/.exec(line.trim());
  if (!m) return null;
  if (m[1] === "ready") return { ready: Number(m[2]) };
  if (m[1] === "exit") return { exit: { kind: "exit", code: Number(m[2]) } };
  if (m[1] === "signal") return { exit: { kind: "signal", signal: Number(m[2]) } };
  return { exit: { kind: "sandbox", message: `sandbox set-up failed at ${m[2]}` } };
}

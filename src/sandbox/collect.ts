import type { ConsolaInstance } from "consola";
import type { ArtifactBudget } from "../runner/artifact-budget.ts";

/**
 * Copies the job's $KILN_OUT (its /tmp/out, while PID 1 holds the namespace) into `to` through the
 * launcher's --collect mode, which opens every path component inside the job's root without following
 * anything the job could have planted (README.md in helper/, "--collect"). What it skips, and a file that
 * passes the budget, are noted in the job's log; a failure of the copy itself is Kiln's, logged here.
 */
export async function collectArtifacts(o: {
  launcher: string;
  pid1: number;
  uid: number;
  to: string;
  budget: ArtifactBudget;
  note(line: string): void;
  log: ConsolaInstance;
}): Promise<void> {
  const p = Bun.spawn(
    [
      o.launcher,
      "--collect",
      String(o.pid1),
      "--to",
      o.to,
      "--uid",
      String(o.uid),
      "--gid",
      String(o.uid),
      "--budget",
      String(o.budget.left()),
    ],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
  );
  const [out, err, code] = await Promise.all([
    new Response(p.stdout).text(),
    new Response(p.stderr).text(),
    p.exited,
  ]);
  const shown = (name: string) => (name === "." ? "$KILN_OUT" : `$KILN_OUT/${name}`);
  let files = 0;
  for (const line of out.split("\n")) {
    const m = /^(file|skip|over) (\S+) (.*)$/.exec(line);
    if (!m) continue;
    const [, kind, name, rest] = m as unknown as [string, string, string, string];
    if (kind === "skip") o.note(`not collected: ${shown(name)}: ${rest}`);
    else if (kind === "file") {
      files++;
      o.budget.take(name, Number(rest));
    } else o.note(o.budget.take(name, Number(rest)) ?? `${shown(name)} does not fit the artifact budget`);
  }
  if (code !== 0) {
    const why = err.trim() || `exit ${code}`;
    o.note(`collecting $KILN_OUT failed: ${why}`);
    o.log.warn(`collecting artifacts of pid ${o.pid1} failed: ${why}`);
  } else o.log.debug(`collected ${files} artifact file(s) to ${o.to}`);
}

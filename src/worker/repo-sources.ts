import { AppError } from "../lib/errors.ts";
import { type JobSpec, SPEC_LIMITS } from "../protocol/job.ts";
import { repoSourcePaths, repoSourceText } from "../protocol/repo-sources.ts";

/*
 * The apt and dnf sources of the repositories a job uses (`kiln submit --use-repo`), written into the
 * job's own writable root before its setup runs, so the setup (and the job) can `apt-get install` or
 * `dnf install` from them. They are written by shell at the head of the setup, as root on the job's
 * overlay (never into the shared template), and point at the job's API proxy (`$KILN_API/repos/NAME/`),
 * which forwards to the master with the job's credential. Each source names its repository's own key
 * (`signed-by`, `gpgkey`): the metadata must verify against it, nothing is marked trusted.
 */

/** `text` as one single-quoted shell word: nothing in it is expanded. */
const quoted = (text: string) => `'${text.replaceAll("'", `'\\''`)}'`;

// Stands for the repositories' URL inside the job in a quoted text, where the shell puts `$KILN_API/repos`.
const URL_MARK = "@@KILN_REPOS_URL@@";

/**
 * The shell that writes the sources of `spec`'s repositories, or "" when it uses none. `root` is where the
 * files go below (the job's own `/`; a directory in tests).
 */
export function repoSourcesScript(spec: Pick<JobSpec, "useRepos" | "repoSources">, root = ""): string {
  if (spec.useRepos.length === 0) return "";
  const lines = [
    "# Written by Kiln: the sources of the repositories this job uses (--use-repo), via its API proxy.",
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell text, expanded by the job's shell
    'kiln_repos="${KILN_API:?the job API proxy is missing}/repos"',
  ];
  for (const r of spec.repoSources) {
    const at = repoSourcePaths(r.format, r.name);
    const paths = { source: `${root}${at.source}`, key: `${root}${at.key}` };
    const source = quoted(repoSourceText(r, `${URL_MARK}/${r.name}/`)).replaceAll(
      URL_MARK,
      `'"$kiln_repos"'`,
    );
    const dirs = [paths.source, paths.key].map((p) => p.slice(0, p.lastIndexOf("/")));
    lines.push(
      `mkdir -p ${dirs.join(" ")}`,
      `printf '%s' ${quoted(r.key)} > ${paths.key}`,
      `printf '%s' ${source} > ${paths.source}`,
      // apt reads the key as its unprivileged _apt user.
      `chmod 0644 ${paths.key} ${paths.source}`,
      `echo "kiln: repository ${r.name} (${r.format}) from $kiln_repos/${r.name}/: ${at.source}, key ${at.key}"`,
    );
  }
  const gone = spec.useRepos.filter((n) => !spec.repoSources.some((r) => r.name === n));
  for (const n of gone)
    lines.push(
      `echo "kiln: repository ${n} was removed (or made unreadable to this job's project) since the job was submitted: no source written for it" >&2`,
    );
  return `${lines.join("\n")}\n`;
}

/**
 * `spec` as the sandbox runs it: when it uses repositories and has a writable template root, its setup
 * starts by writing their sources (a job without a setup of its own gets one that only does that). On
 * the host root, which is never writable, nothing is written: the job reaches the repositories through
 * `$KILN_API/repos/NAME/` only. Throws REPO_SOURCES_TOO_LARGE (the job's fault) when the keys and the
 * setup together are more than the launcher can be given.
 */
export function withRepoSources(spec: JobSpec): JobSpec {
  if (spec.useRepos.length === 0 || spec.root === "host" || !spec.writableRoot) return spec;
  const setup = `${repoSourcesScript(spec)}${spec.setup ?? ""}`;
  // The setup is one argument of the launcher, which execve(2) takes up to 128 KiB (MAX_ARG_STRLEN).
  const bytes = Buffer.byteLength(setup);
  if (bytes > SPEC_LIMITS.stringBytes)
    throw new AppError(
      "REPO_SOURCES_TOO_LARGE",
      `the setup with the sources and keys of ${spec.repoSources.length} repositories takes ${bytes} bytes, more than the ${SPEC_LIMITS.stringBytes} a setup may: use fewer --use-repo repositories, or a shorter setup`,
    );
  return { ...spec, setup };
}

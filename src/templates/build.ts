import { copyFileSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { TemplateSpec } from "../protocol/template.ts";

/*
 * Builds one template tree into `target`. This runs as root on the worker, with the host's network, in a
 * private mount and pid namespace (util-linux unshare) so the /proc and /dev it mounts into the tree for
 * apt vanish with it and nothing it starts outlives it. Template recipes come from operators (the
 * operator role), not from jobs.
 */

export type Sink = (chunk: Uint8Array | string) => void;
export type FetchArtifact = (job: number, name: string, dest: string) => Promise<void>;

const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

async function run(argv: string[], sink: Sink, env: Record<string, string> = {}): Promise<void> {
  sink(`$ ${argv.join(" ")}\n`);
  const p = Bun.spawn(argv, {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH, LANG: "C.UTF-8", ...env },
  });
  const pump = async (s: ReadableStream<Uint8Array>) => {
    for await (const c of s) sink(c);
  };
  await Promise.all([pump(p.stdout), pump(p.stderr)]);
  const code = await p.exited;
  if (code !== 0) throw new AppError("TEMPLATE_BUILD_FAILED", `${argv[0]} exited with status ${code}`);
}

/** Runs a shell script as root inside the tree, with /proc, /dev and the host's DNS set up for apt. */
async function inChroot(target: string, script: string, sink: Sink) {
  if (!existsSync("/etc/resolv.conf"))
    throw new AppError("TEMPLATE_BUILD_FAILED", "no /etc/resolv.conf on this worker");
  mkdirSync(join(target, "etc"), { recursive: true });
  copyFileSync("/etc/resolv.conf", join(target, "etc", "resolv.conf"));
  writeFileSync(join(target, "kiln-template-step.sh"), script, { mode: 0o700 });
  const outer = [
    "set -e",
    'mkdir -p "$T/proc" "$T/dev"',
    'mount -t proc proc "$T/proc"',
    'mount --rbind /dev "$T/dev"',
    'exec chroot "$T" /usr/bin/env -i PATH=' +
      PATH +
      " HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -e /kiln-template-step.sh",
  ].join("\n");
  try {
    await run(
      ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "/bin/sh", "-c", outer],
      sink,
      { T: target },
    );
  } finally {
    await Bun.spawn(["rm", "-f", join(target, "kiln-template-step.sh")]).exited;
  }
}

const apt = (packages: string[]) =>
  packages.length
    ? `apt-get update\napt-get install -y --no-install-recommends ${packages.join(" ")}\napt-get clean\n`
    : "";

/** Builds `spec` into the empty directory `target`; `baseRoot` is the base template's tree when it has one. */
export async function buildTree(
  spec: TemplateSpec,
  target: string,
  baseRoot: string | null,
  sink: Sink,
  fetchArtifact?: FetchArtifact,
): Promise<void> {
  const r = spec.recipe;
  mkdirSync(target, { recursive: true, mode: 0o755 });
  if (r.kind === "debootstrap") {
    if (!Bun.which("debootstrap", { PATH })) {
      throw new AppError(
        "TEMPLATE_BUILD_FAILED",
        "debootstrap is not installed on this worker: apt-get install debootstrap",
      );
    }
    const variant = r.variant === "-" ? [] : [`--variant=${r.variant}`];
    const include = r.include.length ? [`--include=${r.include.join(",")}`] : [];
    await run(["debootstrap", ...variant, ...include, r.suite, target, r.mirror], sink);
    if (r.packages.length) await inChroot(target, apt(r.packages), sink);
    return;
  }
  if (r.kind === "script") {
    if (!baseRoot) throw new AppError("TEMPLATE_BUILD_FAILED", `template ${spec.name} has no base tree`);
    await run(["cp", "-a", "--reflink=auto", `${baseRoot}/.`, target], sink);
    await inChroot(target, `${apt(r.packages)}${r.script}\n`, sink);
    return;
  }
  if (!fetchArtifact) throw new AppError("TEMPLATE_BUILD_FAILED", "this worker cannot fetch job artifacts");
  const tarball = `${target}.tar`;
  try {
    sink(`--- kiln: fetching artifact ${r.artifact} of job ${r.job} ---\n`);
    await fetchArtifact(r.job, r.artifact, tarball);
    // GNU tar detects the compression itself, keeps owners and modes as root, strips leading "/" and
    // refuses ".." members, so a job's tarball lands inside the tree and nowhere else.
    await run(["tar", "-x", "-p", "--numeric-owner", "-f", tarball, "-C", target], sink);
  } finally {
    await Bun.spawn(["rm", "-f", tarball]).exited;
  }
  if (r.packages.length) await inChroot(target, apt(r.packages), sink);
}

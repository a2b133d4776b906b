import {
  closeSync,
  constants,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { TemplateSpec } from "../protocol/template.ts";

/*
 * Builds one template tree into `target`. Every step that runs a program runs in a build sandbox
 * (src/sandbox/template-build.ts, the launcher's `--build` mode): real uid 0, but in its own pid, mount,
 * ipc, uts, net and cgroup namespaces, with only eight capabilities (named in the launcher), NoNewPrivs and
 * the seccomp filter, under the memory, pids and time limits of [templates], and with network only through
 * an egress proxy to the hosts the step needs. Root is root only inside the tree being built:
 *
 * - debootstrap's first stage (`--foreign`: download and unpack, no package script runs) sees the host's
 *   root read-only and masked as a job does, and the tree writable at /target; its only egress is the
 *   mirror's host;
 * - its second stage, the packages step and the operator's scripts run with the tree itself as `/`
 *   (pivot_root), so the host's files, processes and network are out of reach; their egress is the hosts
 *   the tree's apt sources name;
 * - a tarball is unpacked by the host's tar like the first stage, from the artifact bound read-only.
 *
 * Host steps run only the host's own programs (debootstrap's first stage unpacks packages but runs none of
 * their scripts; tar), never code from the recipe or the tree; they still see only what a job sees.
 *
 * Why real uid 0 and not a user namespace: debootstrap and dpkg want to own files as root and switch users;
 * as root, a user namespace's files would need an ownership shift afterwards and user namespaces are off
 * on several distributions (DESIGN.md). The capability set left (no SYS_ADMIN, MKNOD, SYS_CHROOT) is what
 * keeps root inside the tree; debootstrap copes without mknod when told it is in a container
 * (`container=lxc`: /usr/share/debootstrap/functions then skips check_sane_mount's mknod test and lets
 * setup_devices fail softly; the sandbox brings its own /dev anyway).
 */

export type Sink = (chunk: Uint8Array | string) => void;
export type FetchArtifact = (job: number, name: string, dest: string) => Promise<void>;

/** One program run of a build: where it runs (see the header), what, and which hosts it may reach. */
export interface BuildStep {
  where: "host" | "tree";
  tree: string;
  command: string[];
  /** HOST or HOST:PORT, as for a job's --egress. */
  egress: string[];
  env?: Record<string, string>;
  /** Host files bound read-only at the given top-level path (host steps only). */
  roBinds?: [string, string][];
}

/** A build's sandbox: steps share one cgroup and one deadline; close() removes what it holds. */
export interface BuildSandbox {
  /** Runs the step to its end, or throws with a message that says why it failed (time-out, memory...). */
  step(step: BuildStep, sink: Sink): Promise<void>;
  close(): Promise<void>;
}

/** Opens the sandbox for the build of template NAME (HASH). */
export type OpenBuildSandbox = (name: string, hash: string) => Promise<BuildSandbox>;

/** Where debootstrap keeps its own log inside the tree; a failed build copies it into its kept log. */
export const DEBOOTSTRAP_LOG = "debootstrap/debootstrap.log";

const apt = (packages: string[]) =>
  packages.length
    ? `apt-get update\napt-get install -y --no-install-recommends ${packages.join(" ")}\napt-get clean\n`
    : "";

/** The host (and port, if not the scheme's own) of an http(s) URL, as an egress entry; null otherwise. */
export function egressOf(url: string): string | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null;
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") return null;
  const host = u.hostname.replace(/^\[|\]$/g, "");
  return u.port ? `${host}:${u.port}` : host;
}

/**
 * Reads the file at REL inside TREE without following any symlink on the way: a tree is made by code we
 * do not trust, and a link in it must not make the worker read a host file. Null if it is not a plain file.
 */
export function readInTree(tree: string, rel: string): string | null {
  let path = tree;
  for (const part of rel.split("/").filter(Boolean)) {
    path = join(path, part);
    try {
      if (lstatSync(path).isSymbolicLink()) return null;
    } catch {
      return null;
    }
  }
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    // A fifo or device planted in the tree must not hang or feed the worker.
    const st = lstatSync(path);
    if (!st.isFile() || st.size > 1 << 20) return null;
    return readFileSync(fd, "utf8");
  } finally {
    closeSync(fd);
  }
}

/**
 * The hosts the tree's apt sources name (sources.list, sources.list.d/*.list and *.sources), as egress
 * entries: what a packages or script step may reach.
 */
export function aptHosts(tree: string): string[] {
  const files = ["etc/apt/sources.list"];
  try {
    const d = join(tree, "etc/apt/sources.list.d");
    if (!lstatSync(join(tree, "etc/apt")).isSymbolicLink() && !lstatSync(d).isSymbolicLink())
      for (const f of readdirSync(d))
        if (/\.(list|sources)$/.test(f)) files.push(`etc/apt/sources.list.d/${f}`);
  } catch {
    // No sources.list.d.
  }
  const hosts = new Set<string>();
  for (const f of files) {
    const text = readInTree(tree, f) ?? "";
    for (const line of text.split("\n")) {
      const l = line.replace(/#.*/, "").trim();
      const urls = /^deb(-src)?\s/.test(l)
        ? [l.replace(/^deb(-src)?\s+(\[[^\]]*\]\s+)?/, "").split(/\s+/)[0]!]
        : /^URIs:/i.test(l)
          ? l.slice(5).trim().split(/\s+/)
          : [];
      for (const u of urls) {
        const e = egressOf(u);
        if (e) hosts.add(e);
      }
    }
  }
  return [...hosts].sort();
}

/**
 * Writes the operator's script into the tree as /kiln-template-step.sh, creating it afresh and refusing
 * a link planted in its place, so the worker's write cannot land outside the tree.
 */
function writeStepScript(tree: string, script: string): string {
  const path = join(tree, "kiln-template-step.sh");
  try {
    unlinkSync(path);
  } catch {
    // Not there: the usual case.
  }
  const fd = openSync(
    path,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o700,
  );
  try {
    writeSync(fd, script);
  } finally {
    closeSync(fd);
  }
  return path;
}

/**
 * Runs shell SCRIPT as root with the tree as `/`, reaching only the hosts of the tree's apt sources and
 * those the recipe lists (`kiln template add --egress`).
 */
async function inTree(sb: BuildSandbox, tree: string, script: string, extra: string[], sink: Sink) {
  const path = writeStepScript(tree, script);
  const egress = [...new Set([...aptHosts(tree), ...extra])];
  sink(`--- kiln: egress for this step: ${egress.join(", ") || "none"} ---\n`);
  try {
    await sb.step(
      { where: "tree", tree, command: ["/bin/sh", "-e", "/kiln-template-step.sh"], egress },
      sink,
    );
  } finally {
    try {
      unlinkSync(path);
    } catch {
      // The script removed itself; nothing to clean.
    }
  }
}

/** Builds `spec` into the empty directory `target`; `baseRoot` is the base template's tree when it has one. */
export async function buildTree(
  spec: TemplateSpec,
  target: string,
  baseRoot: string | null,
  sink: Sink,
  sb: BuildSandbox,
  fetchArtifact?: FetchArtifact,
): Promise<void> {
  const r = spec.recipe;
  mkdirSync(target, { recursive: true, mode: 0o755 });
  if (r.kind === "debootstrap") {
    const variant = r.variant === "-" ? [] : [`--variant=${r.variant}`];
    const include = r.include.length ? [`--include=${r.include.join(",")}`] : [];
    const mirror = egressOf(r.mirror);
    // container=lxc: see the header; debootstrap needs no device nodes of its own then.
    const env = { container: "lxc" };
    await sb.step(
      {
        where: "host",
        tree: target,
        command: ["debootstrap", "--foreign", ...variant, ...include, r.suite, "/target", r.mirror],
        egress: mirror ? [mirror] : [],
        env,
      },
      sink,
    );
    await sb.step(
      {
        where: "tree",
        tree: target,
        command: ["/debootstrap/debootstrap", "--second-stage"],
        egress: [],
        env,
      },
      sink,
    );
    if (r.packages.length) await inTree(sb, target, apt(r.packages), r.egress ?? [], sink);
    return;
  }
  if (r.kind === "script") {
    if (!baseRoot) throw new AppError("TEMPLATE_BUILD_FAILED", `template ${spec.name} has no base tree`);
    // cp -a copies links as links: the base's tree is read on the host, but never followed out of it.
    sink(`$ cp -a ${baseRoot}/. ${target}\n`);
    const cp = Bun.spawn(["cp", "-a", "--reflink=auto", `${baseRoot}/.`, target], { stderr: "pipe" });
    const [err, code] = await Promise.all([new Response(cp.stderr).text(), cp.exited]);
    if (code !== 0)
      throw new AppError("TEMPLATE_BUILD_FAILED", `copying the base tree failed: ${err.trim()}`);
    await inTree(sb, target, `${apt(r.packages)}${r.script}\n`, r.egress ?? [], sink);
    return;
  }
  if (!fetchArtifact) throw new AppError("TEMPLATE_BUILD_FAILED", "this worker cannot fetch job artifacts");
  const tarball = `${target}.tar`;
  try {
    sink(`--- kiln: fetching artifact ${r.artifact} of job ${r.job} ---\n`);
    await fetchArtifact(r.job, r.artifact, tarball);
    // GNU tar detects the compression itself, keeps owners and modes as root, strips leading "/" and
    // refuses ".." members; in the sandbox it can write nowhere but the tree anyway.
    await sb.step(
      {
        where: "host",
        tree: target,
        command: ["tar", "-x", "-p", "--numeric-owner", "-f", "/kiln-tarball", "-C", "/target"],
        egress: [],
        roBinds: [[tarball, "/kiln-tarball"]],
      },
      sink,
    );
  } finally {
    await Bun.spawn(["rm", "-f", tarball]).exited;
  }
  if (r.packages.length) await inTree(sb, target, apt(r.packages), r.egress ?? [], sink);
}

import { z } from "zod";
import { nameSchema } from "../lib/names.ts";

/*
 * How a machine is told about a Kiln package repository: apt's sources (sources.list(5)) and dnf's .repo
 * file (dnf.conf(5)). The master prints them for people (`kiln repo show`); the worker writes them into a
 * job that names the repository with `--use-repo`, pointing at the job's own API proxy. One text for both,
 * so what a job gets is what a person is told to write.
 */

/**
 * A repository a job uses (`kiln submit --use-repo`), as the master resolves it when it assigns the job:
 * what its worker needs to write the job's apt or dnf source. `key` is the armoured public key the
 * repository's metadata is signed with (what `kiln repo key NAME` prints).
 */
export const RepoSourceSchema = z.object({
  name: nameSchema(),
  format: z.enum(["deb", "rpm"]),
  /** Debian: the suite and component; null for rpm. */
  dist: nameSchema().nullable(),
  component: nameSchema().nullable(),
  key: z.string().max(1 << 20),
});
/** A checked RepoSourceSchema value. */
export type RepoSource = z.infer<typeof RepoSourceSchema>;

/** What a `.repo` file for one Kiln repository needs. */
export interface RpmRepoFileOptions {
  /** The repository's name in Kiln; becomes the `[section]` id. */
  name: string;
  /** The URL of the repository root (where `repodata/` is), e.g. `http://master:8080/repos/NAME/`. */
  baseurl: string;
  /** The URL of the repository's public key when its metadata is signed; absent means unsigned. */
  keyUrl?: string;
  /** Whether the packages themselves carry rpm signatures (Kiln signs metadata, not packages). */
  packagesSigned?: boolean;
}

/**
 * The text of a dnf/yum `.repo` file (dnf.conf(5)): a signed repository turns on repo_gpgcheck so dnf
 * verifies repomd.xml against the key; package signatures are checked only when the packages are signed,
 * since Kiln's repositories sign the metadata that carries every package's checksum.
 */
export function rpmRepoFile(o: RpmRepoFileOptions): string {
  const id = o.name.replace(/[^A-Za-z0-9._:-]/g, "_");
  const lines = [
    `[kiln-${id}]`,
    `name=Kiln repository ${o.name}`,
    `baseurl=${o.baseurl}`,
    "enabled=1",
    `gpgcheck=${o.packagesSigned && o.keyUrl ? 1 : 0}`,
    `repo_gpgcheck=${o.keyUrl ? 1 : 0}`,
    // dnf's default keeps metadata for 48 hours; a build farm's repository changes with every publish.
    "metadata_expire=300",
  ];
  if (o.keyUrl) lines.push(`gpgkey=${o.keyUrl}`);
  return `${lines.join("\n")}\n`;
}

/**
 * The deb822 `.sources` stanza (sources.list(5), apt 1.1 and later) for a Kiln Debian repository at `url`
 * whose key is the file `keyPath`: apt checks the repository's InRelease against that key alone.
 */
export function debSources(o: { url: string; dist: string; component: string; keyPath: string }): string {
  return [
    "Types: deb",
    `URIs: ${o.url}`,
    `Suites: ${o.dist}`,
    `Components: ${o.component}`,
    `Signed-By: ${o.keyPath}`,
    "",
  ].join("\n");
}

/** The files a job using repository `name` gets, by format: where its source and its key are written. */
export const repoSourcePaths = (format: "deb" | "rpm", name: string) =>
  format === "deb"
    ? { source: `/etc/apt/sources.list.d/kiln-${name}.sources`, key: `/etc/apt/keyrings/kiln-${name}.asc` }
    : { source: `/etc/yum.repos.d/kiln-${name}.repo`, key: `/etc/pki/rpm-gpg/kiln-${name}.asc` };

/** The text of the source file of repository `r` (from repoSourcePaths) when it is served at `url`. */
export function repoSourceText(r: RepoSource, url: string): string {
  const paths = repoSourcePaths(r.format, r.name);
  if (r.format === "deb")
    return debSources({
      url,
      dist: r.dist ?? "stable",
      component: r.component ?? "main",
      keyPath: paths.key,
    });
  return rpmRepoFile({ name: r.name, baseurl: url, keyUrl: `file://${paths.key}` });
}

// The contract between the repository builder and one package format (Debian or RPM): how a package is
// recognized from its own contents, how versions order, and how the metadata of a repository is written.

/** The package formats a repository can hold. */
export type PackageFormat = "deb" | "rpm";

/** What a repository knows of one package, read from the package's own metadata, never from its file name. */
export interface PackageInfo {
  format: PackageFormat;
  name: string;
  /** The full version as the package manager compares it: `[epoch:]version[-revision|-release]`. */
  version: string;
  arch: string;
  /** The source package it was built from, where the format records one. */
  source?: string;
  size: number;
  sha256: string;
  /**
   * What the format's metadata writer needs of this package, stored once at publish so regenerating the
   * metadata never re-reads package files: Debian control fields (in their order), or RPM header data.
   */
  meta: Record<string, string>;
}

/** A package as it sits in a repository: its identity plus its path below the repository root. */
export interface PublishedPackage extends PackageInfo {
  /** Relative path below the repository root, e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`. */
  path: string;
}

/** Signs repository metadata with the repository's key (OpenPGP), so clients need no `trusted=yes`. */
export interface Signer {
  /** A cleartext-signed copy of `text` (Debian's InRelease). */
  clearsign(text: string): Promise<string>;
  /** An ASCII-armoured detached signature of `data` (Release.gpg, repomd.xml.asc). */
  detachSign(data: string | Uint8Array): Promise<string>;
  /** The public key, ASCII-armoured, as a client installs it. */
  publicKey(): Promise<string>;
}

/** The settings of one repository that its metadata depends on. */
export interface RepoSettings {
  name: string;
  format: PackageFormat;
  /** Debian: the suite (e.g. `bookworm`) and component (e.g. `main`). */
  dist?: string;
  component?: string;
  /** Architectures the repository announces (Debian `Architectures:`, e.g. `amd64`, `all`). */
  archs: string[];
}

/** One package format: recognizing packages, ordering versions, writing a repository's metadata. */
export interface RepoFormat {
  format: PackageFormat;
  /** Reads a package's identity from its contents; throws AppError `BAD_PACKAGE` saying what is wrong. */
  read(file: string): Promise<PackageInfo>;
  /** Orders two versions exactly as the package manager does: negative, zero or positive. */
  compare(a: string, b: string): number;
  /** Where a package lives below the repository root. */
  poolPath(pkg: PackageInfo, settings: RepoSettings): string;
  /**
   * Writes the complete metadata for `packages` into `root` (a fresh snapshot directory whose package files
   * are already in place), signed with `signer` when one is given. Works from `PackageInfo.meta` only.
   */
  writeMetadata(
    root: string,
    settings: RepoSettings,
    packages: PublishedPackage[],
    signer?: Signer,
  ): Promise<void>;
}

// The package formats a repository can hold, by name: the one place that knows both.
import { AppError } from "../lib/errors.ts";
import { createDebFormat } from "./deb.ts";
import type { PackageFormat, RepoFormat } from "./format.ts";
import { createRpmFormat } from "./rpm.ts";

/** Every format, in the order `kiln repo add --type` lists them. */
export const PACKAGE_FORMATS: readonly PackageFormat[] = ["deb", "rpm"];

/** Options the formats take; `rpmCacheDir` keeps createrepo_c's last metadata per repository. */
export interface FormatOptions {
  rpmCacheDir?: string;
}

/** The formats by name, made once with their options. */
export function createFormats(o: FormatOptions = {}): Record<PackageFormat, RepoFormat> {
  return { deb: createDebFormat(), rpm: createRpmFormat({ cacheDir: o.rpmCacheDir }) };
}

/** `text` as a package format, or a 400 that lists the ones there are. */
export function packageFormat(text: string): PackageFormat {
  if ((PACKAGE_FORMATS as readonly string[]).includes(text)) return text as PackageFormat;
  throw new AppError("INVALID_REQUEST", `--type ${text}: a repository holds deb or rpm packages`, {
    status: 400,
  });
}

/** The architectures a repository of `format` takes by default on this host: its own, plus the arch-free kind. */
export function defaultArchs(format: PackageFormat, arch = process.arch): string[] {
  if (format === "deb") return [arch === "arm64" ? "arm64" : "amd64", "all"];
  return [arch === "arm64" ? "aarch64" : "x86_64", "noarch"];
}

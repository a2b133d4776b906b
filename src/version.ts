import pkg from "../package.json" with { type: "json" };

/** Kiln's version, from package.json at build time. */
export const VERSION: string = pkg.version;

// Compiles src/main.ts into dist/kiln, one self-contained executable.
//
// bun build --compile does not follow libsql's dynamic `require(\`@libsql/${target}\`)`, so the binary
// would fail outside the checkout with "Cannot find module '@libsql/linux-x64-gnu'". The plugin below
// rewrites that require to the static package path for the target we build, which makes Bun embed the
// native addon.
import type { BunPlugin } from "bun";

const arch = process.arch === "arm64" ? "arm64" : "x64";
const nativePackage = `@libsql/linux-${arch}-gnu`;

const libsqlStaticRequire: BunPlugin = {
  name: "libsql-static-require",
  setup(build) {
    build.onLoad({ filter: /[\\/]node_modules[\\/]libsql[\\/](index|promise)\.js$/ }, async (args) => {
      const text = await Bun.file(args.path).text();
      const rewritten = text.replace(/require\(`@libsql\/\$\{target\}`\)/g, `require("${nativePackage}")`);
      if (rewritten === text) throw new Error(`libsql plugin: no dynamic require found in ${args.path}`);
      return { contents: rewritten, loader: "js" };
    });
  },
};

const outfile = process.argv[2] ?? "dist/kiln";
const result = await Bun.build({
  entrypoints: ["src/main.ts"],
  compile: { outfile },
  minify: true,
  sourcemap: "linked",
  plugins: [libsqlStaticRequire],
  define: { "process.env.KILN_BUILD_TIME": JSON.stringify(new Date().toISOString()) },
});
if (!result.success) {
  for (const log of result.logs) console.error(log);
  process.exit(1);
}
console.error(`built ${outfile}`);

/**
 * Files embedded in the binary with `import path from "..." with { type: "file" }`: the import's value is
 * the file's path (in the checkout when run from source, inside the executable when compiled).
 * `*\/kiln-sandbox` is the native launcher that scripts/build compiles into src/sandbox/gen/.
 */
declare module "*/kiln-sandbox" {
  const path: string;
  export default path;
}

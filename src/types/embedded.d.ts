// Files embedded in the binary with `import path from "..." with { type: "file" }`.
declare module "*/kiln-sandbox" {
  const path: string;
  export default path;
}

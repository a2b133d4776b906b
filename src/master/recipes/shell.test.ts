import { describe, expect, test } from "bun:test";
import { envName, scanScript, substitute } from "./shell.ts";

const contexts = (script: string) => scanScript(script).map((p) => [p.name, p.context, p.line]);

describe("scanScript", () => {
  test("finds placeholders outside quotes, in double quotes and in single quotes", () => {
    expect(contexts(`dget {{url}}\necho "at {{dist}}"\necho '{{dist}}'`)).toEqual([
      ["url", "word", 1],
      ["dist", "double", 2],
      ["dist", "single", 3],
    ]);
  });

  test("a command substitution inside double quotes starts a new unquoted context", () => {
    expect(contexts(`x="$(basename {{url}})"; y="$(echo "{{a}}")"`)).toEqual([
      ["url", "word", 1],
      ["a", "double", 1],
    ]);
  });

  test("backslashes, backquotes and apostrophes in comments do not confuse the quoting", () => {
    const script = `echo \\' {{a}}\n# it's a comment with {{b}}\necho \`echo {{c}}\` "\\"{{d}}"`;
    expect(contexts(script)).toEqual([
      ["a", "word", 1],
      ["b", "comment", 2],
      ["c", "word", 3],
      ["d", "double", 3],
    ]);
  });

  test("here-documents: unquoted ones expand, quoted ones do not, and scanning resumes after them", () => {
    const script = [
      "cat <<EOF > a",
      "it's {{a}}",
      "EOF",
      "cat <<'END'",
      "{{b}}",
      "END",
      'cat <<-"X"',
      "\t{{c}}",
      "\tX",
      "echo {{d}}",
    ].join("\n");
    expect(contexts(script)).toEqual([
      ["a", "heredoc", 2],
      ["b", "quoted-heredoc", 5],
      ["c", "quoted-heredoc", 8],
      ["d", "word", 10],
    ]);
  });

  test("arithmetic expansion is its own context, and the text after it is unquoted again", () => {
    expect(contexts(`echo $(( {{n}} + (1 << 2) )) "$(({{m}}))" {{w}}`)).toEqual([
      ["n", "arith", 1],
      ["m", "arith", 1],
      ["w", "word", 1],
    ]);
  });

  test("text in braces that is not an identifier is not a placeholder", () => {
    expect(contexts(`docker ps --format '{{.Names}}' {{ spaced }} '{''{word}}' {{1x}}`)).toEqual([]);
  });

  test("$#, a parameter's length and a#b are not comments", () => {
    expect(contexts(`echo $# \${#x} a#b {{v}}`).map((c) => c[1])).toEqual(["word"]);
  });
});

describe("substitute", () => {
  test("outside quotes a placeholder becomes a double-quoted expansion", () => {
    expect(substitute("dget {{url}}")).toBe(`dget "\${KILN_VAR_URL}"`);
  });

  test("inside double quotes or an unquoted here-document it becomes a bare expansion", () => {
    expect(substitute('echo "v={{v}}"')).toBe(`echo "v=\${KILN_VAR_V}"`);
    expect(substitute("cat <<EOF\n{{v}}\nEOF\n")).toBe(`cat <<EOF\n\${KILN_VAR_V}\nEOF\n`);
  });

  test("envName upper-cases the variable's name", () => {
    expect(envName("build_dir")).toBe("KILN_VAR_BUILD_DIR");
  });
});

/*
 * A recipe's script names its variables as `{{name}}`. The value is never pasted into the script: each
 * placeholder becomes a parameter expansion of `KILN_VAR_NAME`, and the value travels in the job's
 * environment, so nothing a submitter types is ever parsed as shell code.
 *
 * Where the placeholder sits in the shell grammar decides the expansion's spelling. Outside quotes it
 * becomes `"${KILN_VAR_NAME}"`; inside double quotes or an unquoted here-document it becomes
 * `${KILN_VAR_NAME}`, because the surrounding text already quotes it (writing `"${...}"` there would close
 * the quotes and leave the expansion open to field splitting and globbing). Inside single quotes or a
 * quoted here-document the shell expands nothing, so a placeholder there is refused when the recipe is
 * added, and so is one inside `$((...))`, where the shell would evaluate the value as an arithmetic
 * expression (and bash, as /bin/sh on some systems, runs command substitutions in array subscripts there).
 * The scanner below follows the quoting rules of POSIX sh (XCU 2.2 Quoting, 2.7.4 Here-Document)
 * closely enough for that decision; where it is approximate (a `case` pattern's `)` inside `$(...)`), a
 * mistake can only change the quoting of the expansion, never put a value's text into the code.
 */

/** Where a placeholder sits, as far as quoting goes. */
export type Context = "word" | "double" | "single" | "heredoc" | "quoted-heredoc" | "comment" | "arith";

/** One `{{name}}` in a script: its name, its span, its 1-based line and its quoting context. */
export interface Placeholder {
  name: string;
  start: number;
  end: number;
  line: number;
  context: Context;
}

/*
 * What counts as a placeholder: `{{` + an identifier + `}}`, no spaces. Anything else with braces (a Go
 * template's `{{.Names}}`, `{{ range }}`) is left alone; the validator then insists every placeholder is a
 * declared variable, so an upper-case typo such as `{{URL}}` is caught rather than left in the script.
 */
const PLACEHOLDER = /\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}/y;

/** The environment variable that carries variable `name` into the job. */
export const envName = (name: string) => `KILN_VAR_${name.toUpperCase()}`;

interface Frame {
  kind: "word" | "double" | "single" | "backtick" | "arith";
  // Open parentheses of a `$(...)` frame, so its closing `)` is found.
  depth: number;
}

interface Heredoc {
  delim: string;
  stripTabs: boolean;
  quoted: boolean;
}

const METACHAR = /[\s;&|()<>]/;

/** Finds every placeholder in `script`, in order, with the quoting context the shell will see it in. */
export function scanScript(script: string): Placeholder[] {
  const found: Placeholder[] = [];
  const stack: Frame[] = [{ kind: "word", depth: 0 }];
  let pending: Heredoc[] = [];
  let line = 1;
  let i = 0;

  const placeholderAt = (pos: number, context: Context): number | null => {
    PLACEHOLDER.lastIndex = pos;
    const m = PLACEHOLDER.exec(script);
    if (!m) return null;
    found.push({ name: m[1]!, start: pos, end: pos + m[0].length, line, context });
    return pos + m[0].length;
  };

  // Scans text that is all one context (a comment, a here-document line) up to `end`.
  const scanFlat = (from: number, end: number, context: Context) => {
    for (let k = from; k < end; ) k = placeholderAt(k, context) ?? k + 1;
  };

  while (i < script.length) {
    const top = stack[stack.length - 1]!;
    const context: Context = top.kind === "backtick" ? "word" : top.kind;
    const next = placeholderAt(i, context);
    if (next !== null) {
      i = next;
      continue;
    }
    const c = script[i]!;
    if (c === "\n") {
      line++;
      i++;
      if (pending.length > 0 && top.kind !== "single" && top.kind !== "double") {
        for (const h of pending) {
          const after = readHeredoc(script, i, h, (from, end) =>
            scanFlat(from, end, h.quoted ? "quoted-heredoc" : "heredoc"),
          );
          line += countLines(script, i, after);
          i = after;
        }
        pending = [];
      }
      continue;
    }
    if (top.kind === "single") {
      if (c === "'") stack.pop();
      i++;
      continue;
    }
    if (c === "\\") {
      if (script[i + 1] === "\n") line++;
      i += 2;
      continue;
    }
    if (top.kind === "double") {
      if (c === '"') stack.pop();
      else if (c === "$" && script[i + 1] === "(" && script[i + 2] === "(") {
        stack.push({ kind: "arith", depth: 2 });
        i += 2;
      } else if (c === "$" && script[i + 1] === "(") {
        stack.push({ kind: "word", depth: 1 });
        i++;
      } else if (c === "`") stack.push({ kind: "backtick", depth: 0 });
      i++;
      continue;
    }
    // Unquoted text: the top level, a `$(...)`, a `$((...))` or a backquoted command.
    if (c === "'") stack.push({ kind: "single", depth: 0 });
    else if (c === '"') stack.push({ kind: "double", depth: 0 });
    else if (c === "`") {
      if (top.kind === "backtick") stack.pop();
      else stack.push({ kind: "backtick", depth: 0 });
    } else if (c === "$" && script[i + 1] === "(" && script[i + 2] === "(") {
      stack.push({ kind: "arith", depth: 2 });
      i += 2;
    } else if (c === "$" && script[i + 1] === "(") {
      stack.push({ kind: "word", depth: 1 });
      i++;
    } else if (c === "(" && top.depth > 0) top.depth++;
    else if (c === ")" && top.depth > 0) {
      if (--top.depth === 0) stack.pop();
    } else if (c === "#" && (i === 0 || /[\s;&|()`]/.test(script[i - 1]!))) {
      const end = script.indexOf("\n", i) === -1 ? script.length : script.indexOf("\n", i);
      scanFlat(i, end, "comment");
      i = end;
      continue;
    } else if (c === "<" && script[i + 1] === "<" && script[i + 2] !== "<" && top.kind !== "arith") {
      const op = readHeredocOperator(script, i + 2);
      if (op) {
        pending.push(op.heredoc);
        i = op.end;
        continue;
      }
    }
    i++;
  }
  return found;
}

/** Reads `[-] WORD` after `<<`; the delimiter is WORD with its quotes removed, and quoting it quotes the body. */
function readHeredocOperator(script: string, from: number): { heredoc: Heredoc; end: number } | null {
  let j = from;
  const stripTabs = script[j] === "-";
  if (stripTabs) j++;
  while (script[j] === " " || script[j] === "\t") j++;
  let delim = "";
  let quoted = false;
  while (j < script.length && !METACHAR.test(script[j]!)) {
    const c = script[j]!;
    if (c === "'" || c === '"') {
      const close = script.indexOf(c, j + 1);
      if (close === -1) return null;
      delim += script.slice(j + 1, close);
      quoted = true;
      j = close + 1;
    } else if (c === "\\") {
      delim += script[j + 1] ?? "";
      quoted = true;
      j += 2;
    } else {
      delim += c;
      j++;
    }
  }
  if (delim === "") return null;
  return { heredoc: { delim, stripTabs, quoted }, end: j };
}

/** Passes each body line of a here-document starting at `from` to `scan`; returns where its end line ends. */
function readHeredoc(script: string, from: number, h: Heredoc, scan: (from: number, end: number) => void) {
  let pos = from;
  while (pos < script.length) {
    const nl = script.indexOf("\n", pos);
    const end = nl === -1 ? script.length : nl;
    const text = script.slice(pos, end);
    if ((h.stripTabs ? text.replace(/^\t+/, "") : text) === h.delim) return nl === -1 ? end : nl + 1;
    scan(pos, end);
    pos = nl === -1 ? end : nl + 1;
  }
  return pos;
}

function countLines(text: string, from: number, to: number) {
  let n = 0;
  for (let k = from; k < to; k++) if (text[k] === "\n") n++;
  return n;
}

/**
 * Replaces every placeholder with the expansion its context needs (see the comment at the top). The
 * caller has already refused placeholders in single quotes and quoted here-documents.
 */
export function substitute(script: string, placeholders: Placeholder[] = scanScript(script)): string {
  let out = "";
  let pos = 0;
  for (const p of placeholders) {
    const quoted = p.context === "double" || p.context === "heredoc";
    out += script.slice(pos, p.start) + (quoted ? `\${${envName(p.name)}}` : `"\${${envName(p.name)}}"`);
    pos = p.end;
  }
  return out + script.slice(pos);
}

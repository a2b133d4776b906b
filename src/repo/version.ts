// Version order of Debian and RPM packages, exactly as dpkg and rpm decide it: the repository builder
// refuses a package that is not newer and keeps the newest N, so an order that differs from the package
// manager's would publish a package apt or dnf never installs.

const isDigit = (c: string) => c >= "0" && c <= "9";
const isAlpha = (c: string) => (c >= "a" && c <= "z") || (c >= "A" && c <= "Z");

/** A Debian version split as dpkg splits it: epoch before the first `:`, revision after the last `-`. */
export interface DebVersion {
  epoch: number;
  upstream: string;
  revision: string;
}

/** Splits a Debian version string; throws nothing, a malformed epoch counts as part of the upstream version. */
export function parseDebVersion(text: string): DebVersion {
  const [epoch, upstream, revision] = splitVersion(text);
  return { epoch, upstream, revision };
}

// Both formats write `[epoch:]version[-release]`: a numeric epoch before the first ":", the part after the
// last "-" apart; a malformed epoch stays part of the version.
function splitVersion(text: string): [number, string, string] {
  let rest = text.trim();
  let epoch = 0;
  const colon = rest.indexOf(":");
  if (colon > 0 && /^\d+$/.test(rest.slice(0, colon))) {
    epoch = Number(rest.slice(0, colon));
    rest = rest.slice(colon + 1);
  }
  const dash = rest.lastIndexOf("-");
  return dash < 0 ? [epoch, rest, ""] : [epoch, rest.slice(0, dash), rest.slice(dash + 1)];
}

/**
 * Whether dpkg accepts a Debian version without error or warning (dpkg's parseversion, Policy §5.6.12): a
 * numeric epoch up to 2^31-1, an upstream part that starts with a digit and holds only letters, digits and
 * `.+~-:`, and a non-empty revision of letters, digits and `.+~`. A caret is rpm's, not dpkg's.
 */
export function validDebVersion(text: string): boolean {
  const t = text.trim();
  if (t === "" || /\s/.test(t)) return false;
  const colon = t.indexOf(":");
  if (colon >= 0) {
    const epoch = t.slice(0, colon);
    if (!/^\d+$/.test(epoch) || Number(epoch) > 2 ** 31 - 1) return false;
  }
  const v = parseDebVersion(t);
  if (t.includes("-") && v.revision === "") return false;
  return /^[0-9][A-Za-z0-9.+~:-]*$/.test(v.upstream) && /^[A-Za-z0-9.+~]*$/.test(v.revision);
}

// dpkg's weight of one character in a non-digit run: `~` before the end, the end before letters, letters
// before everything else.
function debOrder(c: string | undefined): number {
  if (c === undefined || isDigit(c)) return 0;
  if (isAlpha(c)) return c.charCodeAt(0);
  if (c === "~") return -1;
  return c.charCodeAt(0) + 256;
}

// dpkg's verrevcmp: alternating non-digit runs (by debOrder) and digit runs (numerically, any length).
function debPart(a: string, b: string): number {
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    let firstDiff = 0;
    while ((i < a.length && !isDigit(a[i] as string)) || (j < b.length && !isDigit(b[j] as string))) {
      const ac = debOrder(a[i]);
      const bc = debOrder(b[j]);
      if (ac !== bc) return ac - bc;
      i++;
      j++;
    }
    while (a[i] === "0") i++;
    while (b[j] === "0") j++;
    while (i < a.length && j < b.length && isDigit(a[i] as string) && isDigit(b[j] as string)) {
      if (!firstDiff) firstDiff = (a.charCodeAt(i) as number) - (b.charCodeAt(j) as number);
      i++;
      j++;
    }
    if (i < a.length && isDigit(a[i] as string)) return 1;
    if (j < b.length && isDigit(b[j] as string)) return -1;
    if (firstDiff) return firstDiff;
  }
  return 0;
}

/** Compares two Debian versions as `dpkg --compare-versions` does: negative, zero or positive. */
export function compareDebVersions(a: string, b: string): number {
  const x = parseDebVersion(a);
  const y = parseDebVersion(b);
  if (x.epoch !== y.epoch) return x.epoch > y.epoch ? 1 : -1;
  const up = debPart(x.upstream, y.upstream);
  if (up) return Math.sign(up);
  return Math.sign(debPart(x.revision, y.revision));
}

/** Compares two RPM version (or release) strings as rpm's rpmvercmp does, with `~` and `^`: -1, 0 or 1. */
export function rpmvercmp(a: string, b: string): number {
  if (a === b) return 0;
  let i = 0;
  let j = 0;
  const sep = (s: string, k: number) => k < s.length && !isAlpha(s[k] as string) && !isDigit(s[k] as string);
  while (i < a.length || j < b.length) {
    while (sep(a, i) && a[i] !== "~" && a[i] !== "^") i++;
    while (sep(b, j) && b[j] !== "~" && b[j] !== "^") j++;
    // A tilde sorts before everything, even the end of the string.
    if (a[i] === "~" || b[j] === "~") {
      if (a[i] !== "~") return 1;
      if (b[j] !== "~") return -1;
      i++;
      j++;
      continue;
    }
    // A caret sorts after the end of the string but before anything else.
    if (a[i] === "^" || b[j] === "^") {
      if (i >= a.length) return -1;
      if (j >= b.length) return 1;
      if (a[i] !== "^") return 1;
      if (b[j] !== "^") return -1;
      i++;
      j++;
      continue;
    }
    if (!(i < a.length && j < b.length)) break;
    const numeric = isDigit(a[i] as string);
    const run = numeric ? isDigit : isAlpha;
    let ei = i;
    let ej = j;
    while (ei < a.length && run(a[ei] as string)) ei++;
    while (ej < b.length && run(b[ej] as string)) ej++;
    // A numeric segment is newer than an alphabetic one.
    if (ej === j) return numeric ? 1 : -1;
    let sa = a.slice(i, ei);
    let sb = b.slice(j, ej);
    if (numeric) {
      sa = sa.replace(/^0+/, "");
      sb = sb.replace(/^0+/, "");
      if (sa.length !== sb.length) return sa.length > sb.length ? 1 : -1;
    }
    if (sa !== sb) return sa < sb ? -1 : 1;
    i = ei;
    j = ej;
  }
  if (i >= a.length && j >= b.length) return 0;
  return i >= a.length ? -1 : 1;
}

/** An RPM package's epoch, version and release. */
export interface RpmEvr {
  epoch: number;
  version: string;
  release: string;
}

/** Parses `[epoch:]version[-release]` the way rpm prints EVRs. */
export function parseRpmEvr(text: string): RpmEvr {
  const [epoch, version, release] = splitVersion(text);
  return { epoch, version, release };
}

/** Compares two RPM EVRs as rpm orders installed packages (epoch, then version, then release): -1, 0 or 1. */
export function compareRpmVersions(a: string, b: string): number {
  const x = parseRpmEvr(a);
  const y = parseRpmEvr(b);
  if (x.epoch !== y.epoch) return x.epoch > y.epoch ? 1 : -1;
  return rpmvercmp(x.version, y.version) || rpmvercmp(x.release, y.release);
}

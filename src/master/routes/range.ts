/**
 * Reads a `Range` header for a representation of `size` bytes (RFC 9110, 14.2): null means "send it
 * whole" (no header, another unit, several ranges, or a header that does not parse, all of which a server
 * may ignore), "unsatisfiable" means 416, else the one range, clipped to the end.
 */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | "unsatisfiable" | null {
  if (header === undefined) return null;
  const m = /^bytes=\s*(\d*)\s*-\s*(\d*)\s*$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return null;
  if (m[1] === "") {
    // A suffix: the last N bytes. "-0" asks for none of them.
    const n = Number(m[2]);
    if (n === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  // "9-3" is not a valid range (ignored); "1000-" of 1000 bytes is valid but asks for none of them (416).
  if (m[2] !== "" && Number(m[2]) < start) return null;
  if (start >= size) return "unsatisfiable";
  return { start, end: m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1) };
}

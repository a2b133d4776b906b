// Byte sizes as people write them in config files and job specs ("512M", "1.5GiB").
// Every unit is a power of 1024: a build's "2G" scratch volume is what df shows as 2.0G.

const UNITS: Record<string, number> = {
  "": 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
};

const SIZE_PATTERN = /^(\d+(?:\.\d+)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?$/i;

/**
 * Parses "512M", "2G", "1.5GiB", "100k", "4096" or "4096B" into a whole number of bytes (K/M/G/T and their
 * KB/KiB spellings all mean powers of 1024; fractions round down to a whole byte). Throws an Error naming
 * the text for anything else, including negative, empty and unsafe-integer sizes.
 */
export function parseSize(text: string): number {
  const match = SIZE_PATTERN.exec(text.trim());
  if (!match) {
    throw new Error(
      `invalid size ${JSON.stringify(text)}: expected a number with an optional unit K, M, G or T`,
    );
  }
  const [, num = "", unit = ""] = match;
  const bytes = Math.floor(Number(num) * (UNITS[unit.toLowerCase()] ?? Number.NaN));
  if (!Number.isSafeInteger(bytes)) {
    throw new Error(`invalid size ${JSON.stringify(text)}: too large`);
  }
  return bytes;
}

const FORMAT_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

/** Formats a byte count for people: "0 B", "1023 B", "1.5 GiB", "512 MiB" (at most two decimals). */
export function formatSize(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < FORMAT_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  // toFixed(2) then trimming keeps "1.5" and "1.25" but never prints "1.50" or "512.00".
  const text = unit === 0 ? String(value) : value.toFixed(2).replace(/\.?0+$/, "");
  return `${text} ${FORMAT_UNITS[unit]}`;
}

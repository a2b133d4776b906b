const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses "90s", "15m", "1h30m" or "500ms" into milliseconds; throws on anything else. A bare number is
 * refused: "2" could mean seconds or minutes, and a wrong guess is a job killed early or a day late.
 */
export function parseDuration(text: string): number {
  const t = text.trim();
  if (/^\d+(\.\d+)?$/.test(t))
    throw new Error(`"${text}" needs a unit: ${t}s, ${t}m or ${t}h (ms, s, m, h or d)`);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    consumed = re.lastIndex;
  }
  if (consumed === 0 || consumed !== t.length) {
    throw new Error(`"${text}" is not a duration: use a number with a unit, like 90s, 15m, 2h or 1h30m`);
  }
  return Math.round(total);
}

/** Formats milliseconds for people: "850ms", "12.3s", "4m05s", "2h01m". */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.floor(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

import { describe, expect, test } from "bun:test";
import { formatSize, parseSize } from "./size.ts";

describe("parseSize", () => {
  test("plain numbers are bytes", () => {
    expect(parseSize("0")).toBe(0);
    expect(parseSize("4096")).toBe(4096);
    expect(parseSize("4096B")).toBe(4096);
    expect(parseSize(" 17 ")).toBe(17);
  });

  test("K, M, G and T are powers of 1024 in every spelling", () => {
    expect(parseSize("100k")).toBe(102_400);
    expect(parseSize("100K")).toBe(102_400);
    expect(parseSize("512M")).toBe(512 * 1024 ** 2);
    expect(parseSize("512MB")).toBe(512 * 1024 ** 2);
    expect(parseSize("512 MiB")).toBe(512 * 1024 ** 2);
    expect(parseSize("2G")).toBe(2 * 1024 ** 3);
    expect(parseSize("2gib")).toBe(2 * 1024 ** 3);
    expect(parseSize("3T")).toBe(3 * 1024 ** 4);
  });

  test("fractions are allowed and round down to whole bytes", () => {
    expect(parseSize("1.5GiB")).toBe(1.5 * 1024 ** 3);
    expect(parseSize(".5K")).toBe(512);
    expect(parseSize("0.1K")).toBe(102);
  });

  test("anything else is an error that names the text", () => {
    for (const bad of ["", "M", "-1", "-1M", "1.5.5G", "12 apples", "1e3", "10iB", "5P", "1 2"]) {
      expect(() => parseSize(bad)).toThrow(JSON.stringify(bad));
    }
    expect(() => parseSize("99999999999T")).toThrow("too large");
  });
});

describe("formatSize", () => {
  test("picks the largest unit and trims trailing zeros", () => {
    expect(formatSize(0)).toBe("0 B");
    expect(formatSize(1023)).toBe("1023 B");
    expect(formatSize(1024)).toBe("1 KiB");
    expect(formatSize(1.5 * 1024 ** 3)).toBe("1.5 GiB");
    expect(formatSize(1.25 * 1024 ** 2)).toBe("1.25 MiB");
    expect(formatSize(512 * 1024 ** 2)).toBe("512 MiB");
    expect(formatSize(5 * 1024 ** 4)).toBe("5 TiB");
  });

  test("round-trips through parseSize for whole units", () => {
    for (const text of ["1 KiB", "64 MiB", "1.5 GiB", "2 TiB"]) {
      expect(formatSize(parseSize(text))).toBe(text);
    }
  });
});

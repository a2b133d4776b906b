import { expect, test } from "bun:test";
import { JobSpecSchema } from "../protocol/job.ts";
import type { JobRow } from "../store/schema.ts";
import { specOf } from "./dispatcher.ts";

test("the spec a worker gets carries every spec field of the row, by the spec's own keys", () => {
  // A row whose every value is distinct, so a field read from the wrong column shows.
  const row = new Proxy({} as JobRow, { get: (_t, k) => `value of ${String(k)}` });
  const sources = [{ name: "tools", format: "deb" as const, dist: "stable", component: "main", key: "K" }];
  const spec = specOf(row, null, "kilnjob_1_credential", sources);
  for (const k of Object.keys(JobSpecSchema.shape)) {
    if (k === "template") expect(spec.template).toBeNull();
    else if (k === "credential") expect(spec.credential).toBe("kilnjob_1_credential");
    // Resolved at assignment from the repositories the row names (useRepos, read from the row).
    else if (k === "repoSources") expect(spec.repoSources).toEqual(sources);
    else expect([k, spec[k as keyof typeof spec]]).toEqual([k, `value of ${k}`]);
  }
});

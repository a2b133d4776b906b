import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { openStore } from "../src/store/open.ts";

/**
 * Writes `n` queued `true` jobs named "waiting I" for `channel` into the store of data dir `data` (made
 * if missing), in one statement, before any master opens it: a backlog as a restarted master would find
 * it. Used by the backlog test and `scripts/bench backlog`.
 */
export async function seedQueuedJobs(data: string, n: number, o: { channel: string; priority?: number }) {
  mkdirSync(data, { recursive: true, mode: 0o700 });
  const store = await openStore(`file:${join(data, "kiln.db")}`);
  try {
    await store.client.execute({
      sql: `WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?)
        INSERT INTO jobs (name, project, channel, arch, priority, command, env, timeout_ms, needs, egress,
          retries, state, created_at)
        SELECT 'waiting ' || i, 'default', ?, NULL, ?, '["true"]', '{}', 3600000, '[]', '[]', 0,
          'queued', ? FROM k`,
      args: [n, o.channel, o.priority ?? 0, Date.now()],
    });
  } finally {
    store.close();
  }
}

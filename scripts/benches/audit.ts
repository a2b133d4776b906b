// Audit benchmark, in process on a real libSQL file: (1) what one page of the audit log costs at the
// newest end and deep in a table of 1,000,000 entries, read by the id cursor GET /api/v1/audit uses,
// side by side with LIMIT/OFFSET paging, the peer that grows with depth; (2) what the guard and the audit
// entry add to a submit: jobs submitted through the API (token lookup, guard, insert, audit entry) beside
// the bare insert of the same jobs. Prints a Markdown table.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { desc } from "drizzle-orm";
import { createApp } from "../../src/master/app.ts";
import { testContext } from "../../src/master/test-context.ts";
import { appendAudit, listAudit } from "../../src/store/audit.ts";
import { insertJob } from "../../src/store/jobs.ts";
import { openStore } from "../../src/store/open.ts";
import { auditLog } from "../../src/store/schema.ts";
import { testJob } from "../../src/store/test-job.ts";
import { createToken } from "../../src/store/tokens.ts";

const ROWS = Number(process.env.KILN_BENCH_AUDIT_ROWS ?? 1_000_000);
const SUBMITS = 1000;
const dir = mkdtempSync(join(tmpdir(), "kiln-bench-audit-"));
const store = await openStore(`file:${join(dir, "kiln.db")}`);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
async function timed(n: number, f: () => Promise<unknown>) {
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await f();
    ms.push(performance.now() - t);
  }
  return median(ms);
}

// Filled with plain multi-row inserts: the fill is not what is measured.
const t0 = Date.parse("2030-01-01T00:00:00Z");
for (let i = 0; i < ROWS; i += 10_000) {
  const values = Array.from(
    { length: Math.min(10_000, ROWS - i) },
    (_, k) => `(${t0 + (i + k) * 1000}, 't', 'n', 'admin', 'job.submit', 'job/${i + k + 1}', NULL)`,
  );
  await store.client.execute(
    `INSERT INTO audit_log (at, token_id, token_name, role, action, target, detail) VALUES ${values.join(",")}`,
  );
}

const deep = Math.floor(ROWS * 0.9);
const cursorNewest = await timed(50, () => listAudit(store.db, { limit: 100 }));
const cursorDeep = await timed(50, () => listAudit(store.db, { limit: 100, before: ROWS - deep }));
const since = await timed(50, () => listAudit(store.db, { limit: 100, since: t0 + deep * 1000 }));
// The peer through the same query builder and row mapping, so only the paging differs.
const offset = (skip: number) =>
  store.db.select().from(auditLog).orderBy(desc(auditLog.id)).limit(100).offset(skip);
const offsetNewest = await timed(50, () => offset(0));
const offsetDeep = await timed(20, () => offset(deep));

const ctx = testContext(dir, store);
const app = createApp(ctx);
const token = (await createToken(store, { role: "submitter", name: "bench" })).secret;
const job = testJob({
  channel: "none",
});
// Taken in turns, one of each, so a busy moment of the machine weighs on both alike.
const entry = {
  tokenId: "t",
  tokenName: "bench",
  role: "submitter",
  action: "job.submit",
  target: "job/1",
  detail: { project: "default", name: "t" },
};
const bareMs: number[] = [];
const apiMs: number[] = [];
const entryMs: number[] = [];
for (let i = 0; i < SUBMITS; i++) {
  let t = performance.now();
  await insertJob(store, job);
  bareMs.push(performance.now() - t);
  t = performance.now();
  const res = await app.request("/api/v1/jobs", {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ command: ["true"], channel: "none" }),
  });
  if (res.status !== 201) throw new Error(`submit: ${res.status} ${await res.text()}`);
  apiMs.push(performance.now() - t);
  t = performance.now();
  await appendAudit(store, { ...entry, at: Date.now() });
  entryMs.push(performance.now() - t);
}
const bare = median(bareMs);
const api = median(apiMs);
const auditEntry = median(entryMs);
store.close();
rmSync(dir, { recursive: true, force: true });

const f = (ms: number) => `${ms.toFixed(2)} ms`;
console.log(
  `| measure (${ROWS.toLocaleString("en")} audit entries, median) | id cursor (Kiln) | LIMIT/OFFSET |`,
);
console.log("|---|---|---|");
console.log(`| newest page of 100 | ${f(cursorNewest)} | ${f(offsetNewest)} |`);
console.log(`| page of 100 at 90% depth | ${f(cursorDeep)} | ${f(offsetDeep)} |`);
console.log(`| first page since a time at 90% depth | ${f(since)} | - |`);
console.log();
console.log(
  `| measure (${SUBMITS} submits, median) | through the API: guard + insert + audit entry | bare insert |`,
);
console.log("|---|---|---|");
console.log(`| one submit | ${f(api)} | ${f(bare)} |`);
console.log(`| of which the audit entry alone | ${f(auditEntry)} | - |`);

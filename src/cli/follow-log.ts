import { AppError, errorFrom } from "../lib/errors.ts";
import { delay } from "../lib/loop.ts";
import { isTerminal, type JobView } from "../protocol/job.ts";
import type { Client } from "./client.ts";

/**
 * Writes a job's log to `out` from byte 0, following it until the job ends. After a dropped connection
 * (the master restarting, a network blip) it reconnects and resumes at the byte it had reached, so no
 * byte is lost or repeated.
 */
export async function followLog(client: Client, id: number, out: NodeJS.WritableStream, follow = true) {
  let offset = 0;
  let failures = 0;
  for (;;) {
    let res: Response;
    try {
      res = await client.raw(`/api/v1/jobs/${id}/log?offset=${offset}&follow=${follow ? 1 : 0}`);
    } catch (err) {
      // Only a lost connection is worth waiting out; a certificate this client does not trust stays so.
      if (err instanceof AppError && err.code !== "MASTER_UNREACHABLE") throw err;
      if (++failures > 600) throw err;
      if (failures === 1) process.stderr.write("kiln: lost the master; reconnecting...\n");
      await delay(Math.min(100 * failures, 1000));
      continue;
    }
    if (!res.ok) throw await errorFrom(res);
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        offset += chunk.length;
        await new Promise<void>((r) => (out.write(chunk) ? r() : out.once("drain", () => r())));
        failures = 0;
      }
    } catch {
      // The stream broke mid-way: reconnect from `offset`.
      await delay(100);
      continue;
    }
    if (!follow) return;
    const job = await client.request<JobView>("GET", `/api/v1/jobs/${id}`).catch(() => null);
    if (job && isTerminal(job.state) && offset >= job.logSize) return;
    await delay(100);
  }
}

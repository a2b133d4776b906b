import { z } from "zod";
import { nameSchema } from "../lib/names.ts";
import { type JobSpecSchema, OutcomeSchema } from "./job.ts";
import type { TemplateSpec } from "./template.ts";

/*
 * Messages on the worker websocket. Text frames carry JSON with a dotted `type`; binary frames carry log
 * bytes (see encodeLogFrame). Every job message names the attempt so a late report about an earlier
 * attempt can be recognised and ignored.
 */

/** A worker's slot as it reports it: name, resources and the hold on it, if any. */
export const SlotInfoSchema = z.object({
  name: nameSchema(),
  resources: z.array(nameSchema()).max(256),
  held: z.string().max(1000).nullable(),
});
/** A checked SlotInfoSchema value. */
export type SlotInfo = z.infer<typeof SlotInfoSchema>;

// Ids and attempts are row numbers: whole, not negative, and within what the store holds exactly.
const JobRef = {
  jobId: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  attempt: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
};

/** Every text message a worker may send; the master drops (and logs) anything this does not accept. */
export const WorkerMessageSchema = z.discriminatedUnion("type", [
  z.object({
    type: z.literal("worker.hello"),
    // Checked by the master itself, which answers a bad name with worker.refused.
    name: z.string().max(200),
    arch: nameSchema(),
    channels: z.array(nameSchema()).max(256),
    version: z.string().max(100),
    slots: z.array(SlotInfoSchema).max(4096),
    running: z.array(z.object({ ...JobRef, slot: z.string().max(200) })),
    /** Attempts that ended and wait in the worker's outbox for the master's ack. */
    finished: z.array(z.object(JobRef)),
    /**
     * The worker's data dir identity, kept across restarts: a reconnect of the same worker replaces its
     * old connection, another worker with the same name is refused.
     */
    instance: z.string().max(64).optional(),
  }),
  z.object({ type: z.literal("worker.heartbeat"), running: z.array(z.object(JobRef)) }),
  z.object({ type: z.literal("worker.slots"), slots: z.array(SlotInfoSchema) }),
  z.object({
    type: z.literal("worker.templates"),
    cached: z.array(z.object({ hash: z.string(), name: z.string(), sizeBytes: z.number().int() })),
  }),
  /** A running job asked for a template by name (`kiln job template NAME`): the master resolves it. */
  z.object({ type: z.literal("template.get"), requestId: z.number().int(), name: z.string() }),
  z.object({ type: z.literal("job.started"), ...JobRef }),
  z.object({ type: z.literal("job.refused"), ...JobRef, message: z.string() }),
  z.object({
    type: z.literal("job.progress"),
    ...JobRef,
    percent: z.number().int().min(0).max(100),
    message: z.string().nullable(),
  }),
  z.object({ type: z.literal("job.finished"), ...JobRef, outcome: OutcomeSchema, logSize: z.number().int() }),
  /** The worker is stopping and has ended these attempts without a result: re-queue them now. */
  z.object({ type: z.literal("worker.stopping"), running: z.array(z.object(JobRef)) }),
]);
/** A checked WorkerMessageSchema value. */
export type WorkerMessage = z.infer<typeof WorkerMessageSchema>;

/** Every text message the master sends a worker. */
export type MasterMessage =
  | { type: "worker.welcome"; heartbeatMs: number; leaseMs: number }
  | { type: "worker.refused"; message: string }
  | { type: "job.assign"; job: z.infer<typeof JobSpecSchema>; slot: string }
  | { type: "job.cancel"; jobId: number; attempt: number }
  | { type: "job.ack"; jobId: number; attempt: number }
  | { type: "job.log.from"; jobId: number; attempt: number; offset: number }
  | { type: "job.forget"; jobId: number; attempt: number }
  | { type: "template.build"; template: TemplateSpec }
  | { type: "template.spec"; requestId: number; template: TemplateSpec | null; error: string | null }
  | { type: "slot.hold"; slot: string; reason: string }
  | { type: "slot.release"; slot: string }
  /** Whether an operator drained the worker; a draining worker finishes its jobs before it stops. */
  | { type: "worker.draining"; draining: boolean };

/** A log chunk: 4-byte big-endian header length, a JSON header, then the raw bytes. */
export interface LogFrame {
  jobId: number;
  attempt: number;
  offset: number;
  data: Uint8Array;
}

/** Encodes a log chunk as one binary frame (see LogFrame). */
export function encodeLogFrame(f: LogFrame): Uint8Array {
  const header = new TextEncoder().encode(JSON.stringify({ j: f.jobId, a: f.attempt, o: f.offset }));
  const out = new Uint8Array(4 + header.length + f.data.length);
  new DataView(out.buffer).setUint32(0, header.length);
  out.set(header, 4);
  out.set(f.data, 4 + header.length);
  return out;
}

/** Decodes a binary log frame; throws on a header that is too long, truncated or not whole numbers. */
export function decodeLogFrame(buf: Uint8Array): LogFrame {
  if (buf.length < 4) throw new Error("bad log frame header");
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const len = view.getUint32(0);
  if (len > 256 || 4 + len > buf.length) throw new Error("bad log frame header");
  let h: { j: number; a: number; o: number } | null;
  try {
    h = JSON.parse(new TextDecoder().decode(buf.subarray(4, 4 + len)));
  } catch {
    throw new Error("bad log frame header");
  }
  if (!h || ![h.j, h.a, h.o].every((n) => Number.isSafeInteger(n) && n >= 0))
    throw new Error("bad log frame header");
  return { jobId: h.j, attempt: h.a, offset: h.o, data: buf.subarray(4 + len) };
}

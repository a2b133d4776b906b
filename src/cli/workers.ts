import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { checkFlags, clientArgs, clientOf, print, safe, table } from "./common.ts";

interface WorkerView {
  name: string;
  arch: string;
  channels: string[];
  state: string;
  holdReason: string | null;
  capacity: number;
  busy: number;
  slots: { name: string; resources: string[]; held: string | null; job: number | null }[];
  lastSeen: string;
}

const rmArgs = {
  ...clientArgs,
  worker: { type: "positional", description: "Worker name (see kiln workers)", required: false },
} as const;
const rm = defineCommand({
  meta: {
    name: "rm",
    description:
      "Forget a worker (its registration, holds and drain state); on a TLS master also revoke its certificate and disconnect it",
  },
  args: rmArgs,
  async run(ctx) {
    checkFlags(ctx, rmArgs);
    const w = ctx.args.worker as string | undefined;
    if (!w) throw new AppError("USAGE", "kiln workers rm WORKER: which worker? see `kiln workers`");
    const res = await clientOf(ctx.args).request("DELETE", `/api/v1/admin/workers/${encodeURIComponent(w)}`);
    print(ctx.args.json, res, () => `removed worker ${safe(w)}`);
  },
});

export const workers = defineCommand({
  meta: { name: "workers", description: "List workers, their slots and why any is held; rm forgets one" },
  args: clientArgs,
  subCommands: { rm },
  async run(ctx) {
    // citty runs a command's own run after the subcommand it ran: `kiln workers rm W` must not list too.
    if (ctx.rawArgs.find((a) => !a.startsWith("-")) === "rm") return;
    checkFlags(ctx, clientArgs);
    const rows = await clientOf(ctx.args).request<WorkerView[]>("GET", "/api/v1/workers");
    print(ctx.args.json, rows, () => {
      if (rows.length === 0) return "no workers have registered yet";
      const main = table(
        ["NAME", "STATE", "ARCH", "CHANNELS", "BUSY/SLOTS", "LAST SEEN"],
        rows.map((w) => [
          w.name,
          w.state + (w.holdReason ? ` (${w.holdReason})` : ""),
          w.arch,
          w.channels.join(","),
          `${w.busy}/${w.capacity}`,
          w.lastSeen,
        ]),
      );
      const held = rows.flatMap((w) =>
        w.slots.filter((s) => s.held).map((s) => `  ${w.name}/${s.name} held: ${safe(s.held!)}`),
      );
      return held.length ? `${main}\n${held.join("\n")}` : main;
    });
  },
});

const workerAction = (
  name: string,
  description: string,
  extra: Record<string, { type: "string"; description: string; valueHint: string }> = {},
) => {
  const args = {
    ...clientArgs,
    ...extra,
    worker: { type: "positional", description: "Worker name", required: false },
  } as const;
  return defineCommand({
    meta: { name, description },
    args,
    async run(ctx) {
      checkFlags(ctx, args);
      const w = ctx.args.worker as string | undefined;
      if (!w)
        throw new AppError("USAGE", `a worker name is required: kiln ${name} WORKER (see \`kiln workers\`)`);
      let body: unknown;
      if (name === "hold") {
        const reason = (ctx.args as Record<string, unknown>).reason;
        if (typeof reason !== "string" || !reason)
          throw new AppError("USAGE", "kiln hold WORKER --reason TEXT: a reason is required");
        body = { reason };
      }
      const slot = (ctx.args as Record<string, unknown>).slot;
      if (typeof slot === "string" && slot) {
        const r = await clientOf(ctx.args).request<{ worker: string; slot: string; held: string | null }>(
          "POST",
          `/api/v1/admin/workers/${encodeURIComponent(w)}/slots/${encodeURIComponent(slot)}/${name}`,
          body,
        );
        print(ctx.args.json, r, () => `${r.worker}/${r.slot}: ${r.held ? `held (${r.held})` : "released"}`);
        return;
      }
      const res = await clientOf(ctx.args).request<WorkerView>(
        "POST",
        `/api/v1/admin/workers/${encodeURIComponent(w)}/${name}`,
        body,
      );
      print(
        ctx.args.json,
        res,
        () => `${res.name}: ${res.state}${res.holdReason ? ` (${res.holdReason})` : ""}`,
      );
    },
  });
};

export const drain = workerAction("drain", "Stop giving a worker new jobs; running ones finish");
const slotFlag = { type: "string", description: "Only this slot of the worker", valueHint: "SLOT" } as const;
export const hold = workerAction("hold", "Hold a worker (or one slot): no new jobs until released", {
  reason: { type: "string", description: "Why (shown in kiln workers)", valueHint: "TEXT" },
  slot: slotFlag,
});
export const release = workerAction("release", "Release a held or draining worker, or a held slot", {
  slot: slotFlag,
});

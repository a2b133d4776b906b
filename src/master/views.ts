import type { JobState, JobView, Reason } from "../protocol/job.ts";
import type { JobRow, WorkerRow } from "../store/schema.ts";
import { listWorkers } from "../store/workers.ts";
import type { MasterContext } from "./context.ts";
import { slotFits } from "./dispatcher.ts";

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The API shape of a job row; `waitingFor` explains a queued job when asked to. */
export function jobView(
  row: JobRow,
  extra: {
    waitingFor?: string | null;
    logSize?: number;
    artifacts?: JobView["artifacts"];
    reproducibility?: JobView["reproducibility"];
  } = {},
): JobView {
  return {
    id: row.id,
    name: row.name,
    project: row.project,
    channel: row.channel,
    arch: row.arch,
    priority: row.priority,
    command: row.command,
    setup: row.setup,
    state: row.state as JobState,
    reason: row.reason as Reason | null,
    message: row.message,
    exitCode: row.exitCode,
    worker: row.worker,
    slot: row.slot,
    attempt: row.attempt,
    retries: row.retries,
    createdAt: iso(row.createdAt)!,
    assignedAt: iso(row.assignedAt),
    startedAt: iso(row.startedAt),
    finishedAt: iso(row.finishedAt),
    timeoutMs: row.timeoutMs,
    resources: {
      memoryBytes: row.memoryBytes,
      cpus: row.cpus,
      pids: row.pids,
      scratchBytes: row.scratchBytes,
      root: row.root,
      writableRoot: row.writableRoot,
      needs: row.needs,
      egress: row.egress,
      peakMemoryBytes: row.peakMemoryBytes,
      cpuMs: row.cpuMs,
    },
    logSize: extra.logSize ?? row.logSize,
    cancelRequested: row.cancelRequested,
    retryOf: row.retryOf,
    repo: row.repo,
    useRepos: row.useRepos,
    recipe:
      row.recipe === null
        ? null
        : { name: row.recipe, version: row.recipeVersion ?? 0, vars: row.recipeVars ?? {} },
    // Names only: a secret's value leaves the master in the job's assignment, and nowhere else.
    secrets: Object.keys(row.secrets ?? {}),
    progress: row.progress === null ? null : { percent: row.progress, message: row.progressMessage },
    waitingFor: extra.waitingFor ?? null,
    artifacts: extra.artifacts ?? [],
    rebuildOf: row.rebuildOf,
    reproducibility: extra.reproducibility ?? null,
  };
}

function describeNeed(row: JobRow) {
  const parts = [`channel "${row.channel}"`];
  if (row.arch) parts.push(`arch ${row.arch}`);
  if (row.needs.length) parts.push(`a slot with ${row.needs.join(", ")}`);
  return parts.join(", ");
}

/** Says why a queued job is still queued, in words an operator can act on. */
export async function whyQueued(ctx: MasterContext, row: JobRow): Promise<string> {
  const registered = await listWorkers(ctx.store.db);
  const fits = (w: WorkerRow) =>
    w.channels.includes(row.channel) &&
    (row.arch === null || row.arch === w.arch) &&
    w.slots.some((s) => row.needs.every((n) => s.resources.includes(n)));
  const candidates = registered.filter(fits);
  if (candidates.length === 0) {
    return `no registered worker can run it: none offers ${describeNeed(row)}; start a worker with a matching --channels/arch/slot, or cancel it`;
  }
  const live = candidates.map((w) => ctx.registry.workers.get(w.name)).filter((w) => w !== undefined);
  if (live.length === 0)
    return `waiting for a matching worker to connect: ${candidates.map((w) => w.name).join(", ")} (offline)`;
  const usable = live.filter((w) => !w.draining && !w.holdReason);
  if (usable.length === 0) {
    return `every matching worker is draining or held: ${live.map((w) => `${w.name}${w.holdReason ? ` (held: ${w.holdReason})` : " (draining)"}`).join(", ")}`;
  }
  const freeSlot = usable.some((w) =>
    [...w.slots.values()].some((s) => !s.job && !s.held && slotFits(row, w, s)),
  );
  if (freeSlot) return "about to be dispatched";
  return `waiting for a free slot on ${usable.map((w) => w.name).join(", ")} (jobs ahead of it by priority or age go first)`;
}

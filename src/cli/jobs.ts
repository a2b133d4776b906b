import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { JOB_STATES, type JobView } from "../protocol/job.ts";
import { checkFlags, clientArgs, clientOf, intArg, jobIdArg, print } from "./common.ts";
import { followLog } from "./follow-log.ts";
import { jobsTable, showText } from "./job-format.ts";

/*
 * The commands on jobs already queued: list, show, logs, cancel, retry. Submitting is submit.ts; how a
 * job reads on the terminal is job-format.ts.
 */

/** `kiln jobs`: lists jobs, newest first, optionally of one state or project. */
export const jobs = defineCommand({
  meta: { name: "jobs", description: "List jobs, newest first" },
  args: {
    ...clientArgs,
    state: {
      type: "string",
      description: `Only jobs in this state: ${JOB_STATES.join(", ")}`,
      valueHint: "STATE",
    },
    project: { type: "string", description: "Only jobs of this project", valueHint: "P" },
    limit: { type: "string", description: "How many (default 50)", valueHint: "N" },
  },
  async run(ctx) {
    checkFlags(ctx, jobs.args as never);
    const a = ctx.args;
    const q = new URLSearchParams();
    if (a.state && !(JOB_STATES as readonly string[]).includes(a.state))
      throw new AppError("USAGE", `--state ${a.state}: use one of ${JOB_STATES.join(", ")}`);
    if (a.state) q.set("state", a.state);
    if (a.project) q.set("project", a.project);
    q.set("limit", String(intArg("limit", a.limit) ?? 50));
    const rows = await clientOf(a).request<JobView[]>("GET", `/api/v1/jobs?${q}`);
    print(a.json, rows, () => jobsTable(rows));
  },
});

/** `kiln show JOB`: one job's state, reason, times, worker and resources. */
export const show = defineCommand({
  meta: {
    name: "show",
    description: "Show one job: state, reason, exit code, times, worker, resources used",
  },
  args: { ...clientArgs, job: { type: "positional", description: "Job id", required: false } },
  async run(ctx) {
    checkFlags(ctx, show.args as never);
    const id = jobIdArg(ctx.args.job);
    const j = await clientOf(ctx.args).request<JobView>("GET", `/api/v1/jobs/${id}`);
    print(ctx.args.json, j, () => showText(j));
  },
});

/** `kiln logs JOB [-f]`: prints a job's log, following it to the job's end with -f. */
export const logs = defineCommand({
  meta: { name: "logs", description: "Print a job's log; -f follows it until the job ends" },
  args: {
    ...clientArgs,
    follow: {
      type: "boolean",
      alias: "f",
      description: "Follow until the job ends (resumes after reconnects)",
    },
    job: { type: "positional", description: "Job id", required: false },
  },
  async run(ctx) {
    checkFlags(ctx, logs.args as never);
    const id = jobIdArg(ctx.args.job);
    const client = clientOf(ctx.args);
    await client.request("GET", `/api/v1/jobs/${id}`);
    await followLog(client, id, process.stdout, Boolean(ctx.args.follow));
  },
});

const simple = (name: string, description: string, action: string) => {
  const cmd = defineCommand({
    meta: { name, description },
    args: { ...clientArgs, job: { type: "positional", description: "Job id", required: false } },
    async run(ctx) {
      checkFlags(ctx, cmd.args as never);
      const id = jobIdArg(ctx.args.job);
      const res = await clientOf(ctx.args).request<JobView | { id: number }>(
        "POST",
        `/api/v1/jobs/${id}/${action}`,
      );
      print(ctx.args.json, res, () =>
        action === "retry"
          ? `job ${id} queued again as ${(res as { id: number }).id}`
          : `job ${id}: ${(res as JobView).state === "cancelled" ? "cancelled" : "cancelling"}`,
      );
    },
  });
  return cmd;
};
/** `kiln cancel JOB`: cancels a job, killing its processes. */
export const cancel = simple("cancel", "Cancel a job (kills its processes)", "cancel");
/** `kiln retry JOB`: queues a copy of an ended job. */
export const retry = simple("retry", "Queue a copy of an ended job", "retry");

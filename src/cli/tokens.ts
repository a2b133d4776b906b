import { defineCommand } from "citty";
import { AppError } from "../lib/errors.ts";
import { checkFlags, clientArgs, clientOf, print, table } from "./common.ts";

const createArgs = {
  ...clientArgs,
  role: {
    type: "string",
    description:
      "admin, operator, submitter, viewer or worker (on a TLS master, worker gives a single-use join token)",
    valueHint: "ROLE",
  },
  project: { type: "string", description: "Limit the token to one project", valueHint: "P" },
  ttl: {
    type: "string",
    description: "Expire after this long, e.g. 30d (a join token: 24h unless given)",
    valueHint: "DURATION",
  },
  name: { type: "string", description: "A label for kiln token ls", valueHint: "NAME" },
} as const;

const create = defineCommand({
  meta: { name: "create", description: "Create an API or worker join token; prints it once" },
  args: createArgs,
  async run(ctx) {
    checkFlags(ctx, createArgs);
    if (!ctx.args.role)
      throw new AppError("USAGE", "--role is required: admin, operator, submitter, viewer or worker");
    const res = await clientOf(ctx.args).request<{ id: string; token: string }>(
      "POST",
      "/api/v1/admin/tokens",
      {
        role: ctx.args.role,
        project: ctx.args.project,
        ttl: ctx.args.ttl,
        name: ctx.args.name,
      },
    );
    print(ctx.args.json, res, () => res.token);
  },
});

const ls = defineCommand({
  meta: { name: "ls", description: "List tokens (never their secrets)" },
  args: clientArgs,
  async run(ctx) {
    checkFlags(ctx, clientArgs);
    const rows = await clientOf(ctx.args).request<
      {
        id: string;
        kind: string;
        name: string;
        role: string;
        project: string | null;
        expiresAt: string | null;
        revoked: boolean;
        usedBy: string | null;
      }[]
    >("GET", "/api/v1/admin/tokens");
    print(ctx.args.json, rows, () =>
      table(
        ["ID", "KIND", "NAME", "ROLE", "PROJECT", "EXPIRES", "REVOKED", "USED BY"],
        rows.map((t) => [
          t.id,
          t.kind,
          t.name,
          t.role,
          t.project,
          t.expiresAt,
          t.revoked ? "yes" : "no",
          t.usedBy,
        ]),
      ),
    );
  },
});

const revokeArgs = {
  ...clientArgs,
  id: { type: "positional", description: "Token id (from kiln token ls)", required: false },
} as const;
const revoke = defineCommand({
  meta: {
    name: "revoke",
    description:
      "Revoke a token; what it holds open (a worker's connection, a followed log) is closed, and a used join token takes the certificates it gave",
  },
  args: revokeArgs,
  async run(ctx) {
    checkFlags(ctx, revokeArgs);
    if (!ctx.args.id) throw new AppError("USAGE", "a token id is required: see `kiln token ls`");
    const res = await clientOf(ctx.args).request<{ id: string; closed: number }>(
      "DELETE",
      `/api/v1/admin/tokens/${encodeURIComponent(ctx.args.id)}`,
    );
    // Revocation also ends what the token holds open: a worker's connection, followed logs.
    print(
      ctx.args.json,
      res,
      () => `revoked ${res.id} (${res.closed} open connection${res.closed === 1 ? "" : "s"} closed)`,
    );
  },
});

export const token = defineCommand({
  meta: { name: "token", description: "API and worker join tokens" },
  subCommands: { create, ls, revoke },
});

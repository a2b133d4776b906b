import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Server } from "bun";
import { adminTokenPath } from "../config/paths.ts";
import type { Config } from "../config/schema.ts";
import { checkDeclaredLength } from "../lib/body.ts";
import { AppError, coerceError } from "../lib/errors.ts";
import { holdLock } from "../lib/lock.ts";
import { logger } from "../lib/log.ts";
import { logOnce } from "../lib/log-once.ts";
import { type Loop, runLoop } from "../lib/loop.ts";
import { localBlobStore, openBlobStore } from "../storage/open.ts";
import { getJob } from "../store/jobs.ts";
import { openStore, storeUrl } from "../store/open.ts";
import { findToken, hashToken, insertTokenHash } from "../store/tokens.ts";
import { markAllDisconnected } from "../store/workers.ts";
import { type Authority, openAuthority, serverTls } from "../tls/authority.ts";
import { admitRequest, WORKER_SOCKET } from "./access.ts";
import { createApp, internalError, refusal } from "./app.ts";
import { createArtifactService, MAX_CHUNK } from "./artifacts.ts";
import type { Caller } from "./auth.ts";
import type { MasterContext } from "./context.ts";
import { createDispatcher } from "./dispatcher.ts";
import { idleSeconds, type RequestEnv } from "./idle.ts";
import { reapLeasesOnce } from "./leases.ts";
import { openLogStore } from "./logs.ts";
import { createRegistry } from "./registry.ts";
import { sweepReleases } from "./releases.ts";
import { createRepoService } from "./repos.ts";
import { createSessions } from "./sessions.ts";
import { createStorageHealth } from "./storage-health.ts";
import { checkConnectedCertificatesOnce, createMasterTls, tokenCredential } from "./tls.ts";
import { type SocketData, workerSocketHandlers } from "./worker-socket.ts";

/** A master that is serving: its URL and context, `done` for its loops, and `stop` to end it all. */
export interface RunningMaster {
  url: string;
  /** The URL a worker on this host reaches it at: the listen address, loopback for a wildcard. */
  localUrl: string;
  ctx: MasterContext;
  /** Rejects if a background loop dies; the role's main exits non-zero then. */
  done: Promise<void>;
  stop(): Promise<void>;
}

/**
 * Creates the token kept in `file` on first use (mode 0600 in the data dir) and makes sure the store knows
 * its hash, so a store recreated under an existing data dir still accepts it. Returns the secret.
 */
async function ensureTokenFile(ctx: MasterContext, file: string, role: "admin" | "worker", name: string) {
  let secret: string;
  if (existsSync(file)) {
    secret = readFileSync(file, "utf8").trim();
    chmodSync(file, 0o600);
  } else {
    secret = `kiln_${randomBytes(24).toString("base64url")}`;
    writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: "wx" });
    ctx.log.info(`created the ${name} token in ${file}`);
  }
  if (!(await findToken(ctx.store.db, secret))) {
    await insertTokenHash(ctx.store, {
      id: hashToken(secret).slice(0, 12),
      hash: hashToken(secret),
      role,
      name,
    });
  }
  return secret;
}

/**
 * The worker token of `kiln up`'s own worker, kept in DATA/worker.token: workers never join with the
 * admin token, the local one included. Revoking it (kiln token revoke) disconnects that worker until a
 * restart (which, with the file removed, makes a new one).
 */
export function localWorkerToken(m: RunningMaster): Promise<string> {
  return ensureTokenFile(m.ctx, join(m.ctx.dataDir, "worker.token"), "worker", "local-worker");
}

/** Starts the master: store, admin token, dispatcher, lease reaper, and the HTTP + websocket server. */
export async function startMaster(cfg: Config, data: string): Promise<RunningMaster> {
  const log = logger("master");
  mkdirSync(data, { recursive: true, mode: 0o700 });
  // One master per data dir: a second one would share the store and the logs with the first.
  const lock = holdLock(
    join(data, "master.lock"),
    `kiln master (pid ${process.pid}, listening on ${cfg.master.listen})`,
    "DATA_DIR_IN_USE",
    (other) => `data dir ${data} is in use by ${other}: stop that one first, or give this one another --data`,
  );
  // The CA before the store: a bad certificate or key is the operator's to fix, said before anything else.
  let authority: Authority | undefined;
  if (cfg.master.tls) {
    const m = cfg.master;
    authority = await openAuthority({
      dir: join(data, "tls"),
      names: m.tls_names,
      cert: m.tls_cert,
      key: m.tls_key,
      log: (msg) => log.info(msg),
    }).catch((err) => {
      lock.release();
      throw err;
    });
  }
  const dbUrl = storeUrl(cfg.master.db, data);
  const storage = createStorageHealth(data, log);
  const store = await openStore(dbUrl, process.env.KILN_DB_TOKEN, storage.wrote).catch((err) => {
    // Never print a URL's credentials: only scheme, host and path.
    const shown = dbUrl.replace(/\/\/[^@/]*@/, "//");
    lock.release();
    throw new AppError("STORE_UNAVAILABLE", `cannot open the store at ${shown}: ${coerceError(err).message}`);
  });
  let blobs: ReturnType<typeof openBlobStore>;
  try {
    blobs = openBlobStore(cfg, data);
  } catch (err) {
    store.close();
    lock.release();
    throw err;
  }
  const dispatcher = createDispatcher(() => ctx);
  const artifacts = createArtifactService({
    dataDir: data,
    store,
    blobs,
    local: localBlobStore(data),
    log,
    wrote: storage.wrote,
  });
  const ctx: MasterContext = {
    cfg,
    dataDir: data,
    store,
    logs: openLogStore(join(data, "logs"), storage.wrote),
    artifacts,
    repos: createRepoService(
      { dataDir: data, store, artifacts, log: log.withTag("repos") },
      cfg.repos.snapshot_grace,
    ),
    storage,
    registry: createRegistry(),
    sessions: createSessions(),
    log,
    dispatch: dispatcher.dispatch,
    dispatched: dispatcher.settled,
    startedAt: Date.now(),
    tls: authority
      ? createMasterTls(authority, store, cfg.master.tls_worker_lifetime, log.withTag("tls"))
      : null,
  };
  await ensureTokenFile(ctx, adminTokenPath(ctx.dataDir), "admin", "admin");
  await markAllDisconnected(store);
  sweepReleases(data);
  await ctx.repos.recover();

  const app = createApp(ctx);
  const tls = ctx.tls;
  const ws = workerSocketHandlers(ctx);
  const [host, port] = splitListen(cfg.master.listen);
  // Errors past the app (a bug in a handler that escaped it) are told once per minute, then counted.
  const unhandled = logOnce((msg) => log.error(msg));
  const idle = idleSeconds(cfg.master.idle_timeout);
  let server: Server<SocketData>;
  try {
    server = Bun.serve<SocketData>({
      hostname: host,
      port,
      // Seconds a connection may stay silent; readers and followers re-arm it (see idle.ts for why this
      // is bounded and what the runtime does on its own before a request's head is in).
      idleTimeout: idle,
      // No runtime bound: past it Bun answers a bare 413 before our code runs, and we want our JSON.
      // Bodies are bounded by us instead: a declared length past MAX_REQUEST_BODY is refused below,
      // every reader stops at its route's limit, and a body no route reads is discarded as it streams
      // (measured on Bun 1.4.5: 400 MiB sent to a handler that does not read it cost 15 MiB of RSS),
      // on a connection the idle timeout then closes.
      maxRequestBodySize: Number.MAX_SAFE_INTEGER,
      // Production mode: Bun's development error page shows source lines and the working directory.
      development: false,
      // Production mode also turns SO_REUSEPORT on by default, which lets a second master bind the same
      // port and take half the connections: one port, one master.
      reusePort: false,
      ...(authority ? { tls: serverTls(authority) } : {}),
      error(err) {
        unhandled("unhandled", `unhandled error serving a request: ${coerceError(err).stack ?? err}`);
        return internalError();
      },
      async fetch(req, srv) {
        // Bun hands every method to fetch, CONNECT with an authority-form target that is no URL.
        if (!METHODS.has(req.method)) {
          return Response.json(
            { error: { code: "METHOD_NOT_ALLOWED", message: `${req.method} is not served here` } },
            { status: 405, headers: { allow: [...METHODS].join(", ") } },
          );
        }
        // A declared body longer than any route takes is refused before anything reads it.
        try {
          checkDeclaredLength(req, MAX_REQUEST_BODY);
        } catch (err) {
          if (err instanceof AppError) return refusal(err);
          throw err;
        }
        const url = new URL(req.url);
        const ip = srv.requestIP(req)?.address;
        if (url.pathname === WORKER_SOCKET) {
          // Only a worker's own credential opens it: a worker token, or on a TLS master its certificate.
          let caller: Caller;
          try {
            caller = await admitRequest(ctx, { who: "worker" }, req, ip);
          } catch (err) {
            const e = coerceError(err);
            if (!(e instanceof AppError) || e.status >= 500) throw e;
            return refusal(e);
          }
          const certified = caller.tokenId.startsWith("cert:");
          const data: SocketData = {
            name: null,
            chain: Promise.resolve(),
            refused: false,
            credential: certified ? caller.tokenId : tokenCredential(caller.tokenId),
            certified: certified ? caller.name : null,
            tokenId: caller.tokenId,
            expiresAt: caller.expiresAt,
            end: null,
          };
          if (srv.upgrade(req, { data })) return undefined;
          return Response.json(
            { error: { code: "UPGRADE_REQUIRED", message: "this endpoint takes a websocket" } },
            { status: 426 },
          );
        }
        const enrolled = tls && (await tls.enroll(req, ip));
        if (enrolled) return enrolled;
        const env: RequestEnv = {
          ip: srv.requestIP(req),
          // Never for a request whose client is gone: its socket is closed, there is nothing to keep.
          rearm: () => {
            if (!req.signal.aborted) srv.timeout(req, idle);
          },
          idleSeconds: idle,
        };
        return app.fetch(req, env);
      },
      websocket: {
        open: ws.open,
        message: ws.message,
        close: ws.close,
        // Logs flow as many small frames; backpressure is handled by the worker's own resend logic.
        maxPayloadLength: 16 * 1024 * 1024,
        idleTimeout: 120,
        sendPings: true,
      },
    });
  } catch (err) {
    store.close();
    lock.release();
    throw new AppError(
      "LISTEN_FAILED",
      `cannot listen on ${cfg.master.listen}: ${(err as Error).message}; is another master running there?`,
    );
  }
  const scheme = authority ? "https" : "http";
  const hostPort = (h: string) => `${h.includes(":") ? `[${h}]` : h}:${server.port}`;
  const url = cfg.master.url || `${scheme}://${hostPort(server.hostname ?? host)}`;
  // A wildcard address is no address to connect to, nor one a certificate can name.
  const local =
    server.hostname === "0.0.0.0" ? "127.0.0.1" : server.hostname === "::" ? "::1" : server.hostname;
  const localUrl = `${scheme}://${hostPort(local ?? host)}`;
  log.info(`master listening on ${url} (data ${data})`);
  if (authority)
    log.info(
      `clients verify this master with --ca ${join(data, "tls", "ca.crt")} or --ca-fingerprint ${authority.anchorFingerprint}`,
    );

  const loops: Loop[] = [
    runLoop({ name: "leases", everyMs: 1000, log }, () => reapLeasesOnce(ctx)),
    ...(authority
      ? [
          // Often enough that an expired certificate does not hold a connection for long, whatever the
          // configured lifetime: a tenth of it, a minute at most.
          runLoop(
            {
              name: "worker certificates",
              everyMs: Math.min(60_000, cfg.master.tls_worker_lifetime / 10),
              log,
              waitFirst: true,
            },
            () => checkConnectedCertificatesOnce(ctx),
          ),
        ]
      : []),
    // Partial uploads of attempts that ended (or went back to the queue) will never be resumed.
    runLoop({ name: "incoming artifacts", everyMs: 60_000, log }, async () => {
      await ctx.artifacts.sweepIncoming(async (id, attempt) => {
        const job = await getJob(store.db, id);
        return !!job && job.attempt === attempt && ["assigned", "running"].includes(job.state);
      });
    }),
    // Snapshots replaced longer ago than repos.snapshot_grace: no client still reads them.
    runLoop({ name: "repository snapshots", everyMs: 60_000, log }, () => ctx.repos.sweepOnce()),
  ];
  ctx.dispatch();
  return {
    url,
    localUrl,
    ctx,
    done: Promise.all(loops.map((l) => l.done)).then(() => {}),
    async stop() {
      for (const l of loops) l.stop();
      server.stop(true);
      await Promise.all(loops.map((l) => l.done));
      await dispatcher.settled();
      await ctx.repos.close();
      store.close();
      lock.release();
    },
  };
}

/** The largest body any route takes: an artifact upload chunk. */
const MAX_REQUEST_BODY = MAX_CHUNK;

/** The methods the API uses; anything else (CONNECT, TRACE, inventions) gets a 405 before routing. */
const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** Splits a `host:port` listen address (an IPv6 host in brackets) into the bare host and the port. */
export function splitListen(listen: string): [string, number] {
  const i = listen.lastIndexOf(":");
  return [listen.slice(0, i).replace(/^\[|\]$/g, ""), Number(listen.slice(i + 1))];
}

import type { ConsolaInstance } from "consola";
import type { Config } from "../config/schema.ts";
import { isUnverifiedCertificate } from "../lib/certificate-error.ts";
import { coerceError, errorFrom } from "../lib/errors.ts";
import { errorFields } from "../lib/log.ts";
import { delay, type Loop, runLoop } from "../lib/loop.ts";
import type { MasterAuth } from "../protocol/master-auth.ts";
import type { MasterMessage, WorkerMessage } from "../protocol/wire.ts";

/*
 * The worker's connection to its master: one websocket at a time, opened again with back-off whenever it
 * drops until stop(), each new one introduced by the worker's hello; it keeps the heartbeat the welcome
 * asks for, remembers whether an operator drained the worker, and tells the master when the worker stops.
 */

/** An attempt as the wire names it. */
export interface JobRef {
  jobId: number;
  attempt: number;
}

/** The worker's side of its link to the master. */
export interface Connection {
  /** Sends a message while connected, else drops it: the next hello and the pump loop make up for it. */
  send(msg: WorkerMessage): void;
  /** Sends a binary frame (a log chunk) while connected; false when it was not sent. */
  sendFrame(frame: Uint8Array): boolean;
  /** True while a connection is open. */
  isOpen(): boolean;
  /** Bytes queued in the open socket, not yet on the wire (0 when there is none). */
  buffered(): number;
  /** True when an operator drained this worker: a stop then waits for its jobs. */
  draining(): boolean;
  /** Tells the master these attempts end because the worker stops, so it re-queues them at once. */
  sayStopping(cut: JobRef[]): void;
  /** No reconnecting and no heartbeat from now on; the open connection stays until close(). */
  stop(): void;
  /** Closes the open connection so the loop opens a new one (with credentials renewed meanwhile). */
  reconnect(): void;
  /** Closes the connection and waits (a second at most) for the connect loop to end. */
  close(): Promise<void>;
  /** Starts the connect loop (once); resolves when it has ended, after stop(). */
  start(): Promise<void>;
}

/** What the connection asks of the rest of the worker. */
export interface ConnectionOptions {
  cfg: Config;
  /** The worker's credentials, asked anew for every connection. */
  auth: MasterAuth;
  name: string;
  log: ConsolaInstance;
  /** The hello of a new connection, built when it opens. */
  hello(): WorkerMessage;
  /** Called when a connection opens, before the hello goes out. */
  onOpen(): void;
  /** The attempts whose leases the heartbeat extends. */
  heartbeat(): JobRef[];
  /** Every message from the master, after the connection has taken what concerns it. */
  onMessage(msg: MasterMessage): void;
}

/** A connection to cfg.worker.master that, once started, connects again after every drop until stop(). */
export function createConnection(o: ConnectionOptions): Connection {
  const { cfg, log } = o;
  const url = `${cfg.worker.master.replace(/^http/, "ws").replace(/\/$/, "")}/api/v1/worker/connect`;
  let ws: WebSocket | null = null;
  let stopping = false;
  let draining = false;
  let heartbeat: Loop | null = null;
  // The socket reconnect() closed, whose close is expected.
  let replaced: WebSocket | null = null;
  const send = (msg: WorkerMessage) => {
    if (ws) ws.send(JSON.stringify(msg));
  };

  /*
   * Why the last connection attempt failed, said once per change at the default level: an operator
   * debugging a worker that never shows up reads it in the worker's log, without a flood.
   */
  let lastTrouble = "";
  const trouble = (what: string, code: string) => {
    if (what === lastTrouble) return;
    lastTrouble = what;
    log.error(what, { code });
  };

  /** Asks the master with a plain request why the websocket did not open (Bun's WebSocket does not say). */
  const diagnose = async (): Promise<{ what: string; code: string; refused: boolean }> => {
    try {
      const http = url.replace(/^ws/, "http");
      const res = await fetch(http, {
        headers: await o.auth.headers("GET", http),
        tls: o.auth.tls(),
        signal: AbortSignal.timeout(5000),
      });
      if (res.status === 401 || res.status === 403) {
        // A certificate refusal says why (revoked, expired, another CA); a token refusal says what to pass.
        if (o.auth.tls()) {
          const e = await errorFrom(res);
          return {
            what: `the master at ${cfg.worker.master} refused this worker's certificate (${e.code}): ${e.message}`,
            code: e.code,
            refused: true,
          };
        }
        return {
          what: `the master at ${cfg.worker.master} refused this worker's token (${res.status}): pass a worker token from \`kiln token create --role worker\` with --join`,
          code: "WORKER_TOKEN_REFUSED",
          // A token may be created a moment later (an operator setting things up): keep trying briskly.
          refused: false,
        };
      }
      return {
        what: `the master at ${cfg.worker.master} did not take the worker connection (HTTP ${res.status}); is that URL a Kiln master of this version?`,
        code: "MASTER_NOT_KILN",
        refused: false,
      };
    } catch (err) {
      const e = coerceError(err);
      // A certificate that does not verify against the pinned CA: not the master this worker joined.
      if (o.auth.tls() && isUnverifiedCertificate(err))
        return {
          what: `the master at ${cfg.worker.master} presents a certificate the CA this worker joined does not vouch for (${e.message}): if that master's CA was replaced, join again with a new token; else something intercepts the connection`,
          code: "TLS_UNVERIFIED",
          refused: true,
        };
      return {
        what: `cannot reach the master at ${cfg.worker.master}: ${e.message}; is it running, and is --master right?`,
        code: "MASTER_UNREACHABLE",
        refused: false,
      };
    }
  };

  /** Takes what concerns the connection itself out of a master's message; the rest goes on. */
  const receive = (msg: MasterMessage) => {
    if (msg.type === "worker.welcome") {
      if (lastTrouble) log.info(`connected to ${cfg.worker.master} as ${o.name} (the trouble above is over)`);
      else log.info(`connected to ${cfg.worker.master} as ${o.name}`);
      lastTrouble = "";
      heartbeat?.stop();
      // Its first beat comes one interval after the welcome, as the master's lease arithmetic expects.
      heartbeat = runLoop({ name: "heartbeat", everyMs: msg.heartbeatMs, log, waitFirst: true }, () =>
        send({ type: "worker.heartbeat", running: o.heartbeat() }),
      );
    }
    if (msg.type === "worker.draining") draining = msg.draining;
    o.onMessage(msg);
  };

  /** One connection, from opening to its close; resolves with whether it opened and why it was refused. */
  const once = async () => {
    const init = { headers: await o.auth.headers("GET", url), tls: o.auth.tls() };
    return new Promise<{ opened: boolean; refused: string | null; welcomed: boolean }>((resolve) => {
      const sock = new WebSocket(url, init as unknown as string[]);
      sock.binaryType = "arraybuffer";
      let opened = false;
      let refused: string | null = null;
      let welcomed = false;
      sock.onopen = () => {
        opened = true;
        ws = sock;
        o.onOpen();
        sock.send(JSON.stringify(o.hello()));
      };
      sock.onmessage = (ev) => {
        let msg: MasterMessage;
        try {
          msg = JSON.parse(String(ev.data)) as MasterMessage;
        } catch (err) {
          log.error(`bad message from the master: ${coerceError(err).message}`, { code: "BAD_MESSAGE" });
          return;
        }
        if (msg.type === "worker.welcome") welcomed = true;
        if (msg.type === "worker.refused") refused = msg.message;
        try {
          receive(msg);
        } catch (err) {
          const e = coerceError(err);
          log.error(`bad message from the master: ${e.message}`, { code: "BAD_MESSAGE", ...errorFields(e) });
        }
      };
      sock.onclose = (ev) => {
        if (ws === sock) ws = null;
        if (replaced === sock) replaced = null;
        else if (opened && !stopping && !refused && !lastTrouble)
          log.warn(`lost the master (${ev.code}${ev.reason ? ` ${ev.reason}` : ""}); reconnecting`);
        resolve({ opened, refused, welcomed });
      };
      // An error is always followed by close, which says what there is to say and resolves.
      sock.onerror = () => {};
    });
  };

  const loop = async () => {
    let backoff = 100;
    while (!stopping) {
      const r = await once().catch((err) => {
        // The credentials could not be read (a key file gone): said once, retried slowly like a refusal.
        trouble(
          `cannot present this worker's credentials: ${coerceError(err).message}`,
          "WORKER_CREDENTIALS",
        );
        return null;
      });
      // Only a welcome resets the back-off: a connection the master refuses right after it opened must
      // not turn into a reconnect every few milliseconds.
      if (r?.welcomed) backoff = 100;
      if (stopping) break;
      let refused = r === null || r.refused !== null;
      if (r?.refused) trouble(`the master refused this worker: ${r.refused}`, "WORKER_REFUSED");
      else if (r && !r.opened) {
        const d = await diagnose();
        trouble(d.what, d.code);
        refused = d.refused;
      }
      // Jitter spreads a fleet's reconnects after a master restart.
      await delay(backoff + Math.random() * backoff * 0.3);
      // A refusal will not change by itself: retry slowly, in case an operator fixes the other side.
      backoff = refused ? Math.min(Math.max(backoff * 2, 10_000), 60_000) : Math.min(backoff * 2, 5000);
    }
  };
  let done: Promise<void> | null = null;

  return {
    send,
    sendFrame(frame) {
      if (!ws) return false;
      ws.send(frame);
      return true;
    },
    isOpen: () => ws !== null,
    buffered: () => ws?.bufferedAmount ?? 0,
    draining: () => draining,
    sayStopping(cut) {
      if (cut.length === 0) return;
      send({ type: "worker.stopping", running: cut });
      log.info(`stopping: ${cut.length} running job(s) ended; the master re-queues them`);
    },
    stop() {
      stopping = true;
      heartbeat?.stop();
    },
    reconnect() {
      // Closed on purpose, so no "lost the master" for it: the loop opens the next one at once.
      replaced = ws;
      ws?.close(1000, "new credentials");
    },
    async close() {
      ws?.close();
      if (done) await Promise.race([done, delay(1000)]);
    },
    start() {
      done ??= loop();
      return done;
    },
  };
}

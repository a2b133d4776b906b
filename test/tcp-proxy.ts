import { connect, createServer, type Socket } from "node:net";

/**
 * A TCP relay on loopback between a client and `port`, for tests that need a connection to fail on cue:
 * it counts the bytes clients send, can cut every open connection once that count passes a mark, and
 * can stall (stop relaying) past one. node:net's pipe() keeps backpressure on both legs.
 */
export interface TcpProxy {
  port: number;
  /** Bytes clients have sent through the relay so far. */
  sent(): number;
  /** How many times the relay has cut its connections. */
  cuts(): number;
  stop(): Promise<void>;
}

export async function startTcpProxy(
  port: number,
  opts: { cutAfter?: number; stallAfter?: number } = {},
): Promise<TcpProxy> {
  let sent = 0;
  let cuts = 0;
  let cutDone = false;
  const open = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, "127.0.0.1");
    open.add(client);
    open.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    upstream.pipe(client);
    client.on("data", (chunk: Buffer) => {
      if (opts.stallAfter !== undefined && sent + chunk.length > opts.stallAfter) {
        // Stalled: nothing more reaches the master, and the client's writes back up.
        client.pause();
        return;
      }
      sent += chunk.length;
      if (!upstream.write(chunk)) {
        client.pause();
        upstream.once("drain", () => client.resume());
      }
      if (opts.cutAfter !== undefined && !cutDone && sent > opts.cutAfter) {
        cutDone = true;
        cuts++;
        for (const s of open) s.destroy();
        open.clear();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  return {
    port: typeof addr === "object" && addr ? addr.port : 0,
    sent: () => sent,
    cuts: () => cuts,
    stop: () =>
      new Promise<void>((r) => {
        for (const s of open) s.destroy();
        server.close(() => r());
      }),
  };
}

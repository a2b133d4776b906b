import { afterEach, expect, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import { waitFor } from "../../test/harness.ts";
import { connectUpstream, type RelayEnd } from "./egress.ts";
import { Outgoing } from "./outgoing.ts";

/*
 * The relay on real loopback sockets: a client, a relay in the middle (as the job's API proxy runs it)
 * and an upstream server, with readers that are slower than the writers, so the kernel's buffers fill
 * and every partial write, drain, pause and resume happens for real.
 */

const MiB = 1 << 20;
const listeners: TCPSocketListener<unknown>[] = [];
afterEach(() => {
  for (const l of listeners.splice(0)) l.stop(true);
});

/** Deterministic bytes, different for each seed, so a dropped or repeated chunk changes the digest. */
function body(size: number, seed: number): Uint8Array {
  const b = new Uint8Array(size);
  let x = seed * 2654435761;
  for (let i = 0; i < size; i += 4) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x;
    b[i + 1] = x >>> 8;
    b[i + 2] = x >>> 16;
    b[i + 3] = x >>> 24;
  }
  return b;
}

const sha = (b: Uint8Array) => new Bun.CryptoHasher("sha256").update(b).digest("hex");

/** What one end received, and how its connection ended. */
interface Received {
  hash: Bun.CryptoHasher;
  bytes: number;
  eof: boolean;
  closed: boolean;
  error: Error | undefined;
}

const received = (): Received => ({
  hash: new Bun.CryptoHasher("sha256"),
  bytes: 0,
  eof: false,
  closed: false,
  error: undefined,
});

/** Reads like a slow consumer: after each chunk it stops reading for `pauseMs`. */
function slowRead(s: Socket<unknown>, r: Received, chunk: Uint8Array, pauseMs: number) {
  r.hash.update(chunk);
  r.bytes += chunk.length;
  if (pauseMs <= 0) return;
  s.pause();
  setTimeout(() => s.resume(), pauseMs);
}

/** Writes all of `data`, honouring partial writes, then sends EOF when `thenEnd`. */
function writeAll(s: Socket<unknown>, data: Uint8Array, thenEnd: boolean) {
  let off = 0;
  const pump = () => {
    while (off < data.length) {
      const n = s.write(data.subarray(off, Math.min(off + 4 * MiB, data.length)));
      if (n <= 0) return;
      off += n;
    }
    if (thenEnd) s.shutdown();
  };
  return { pump, done: () => off === data.length };
}

type Writer = ReturnType<typeof writeAll>;

/** A relay listening on loopback that tunnels each connection to `upstreamPort`, as the job's proxy does. */
function startRelay(upstreamPort: number) {
  const outs: Outgoing[] = [];
  const l = Bun.listen<{ out: Outgoing; end: RelayEnd | null }>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(s) {
        s.data = { out: new Outgoing(s as Socket<unknown>), end: null };
        outs.push(s.data.out);
        s.pause();
        void connectUpstream(s.data.out, "127.0.0.1", upstreamPort, (end) => {
          s.data.end = end;
        });
      },
      data: (s, d) => s.data.end?.data(d),
      drain: (s) => s.data.end?.drain(),
      end: (s) => s.data.end?.end(),
      close: (s, err) => s.data.end?.close(err),
    },
  });
  listeners.push(l as TCPSocketListener<unknown>);
  return { port: l.port, outs };
}

test("64 MiB each way arrive intact through the relay while both readers are slow, with at most a few reads held", async () => {
  const down = body(64 * MiB, 1);
  const up = body(64 * MiB, 2);
  const atServer = received();
  const atClient = received();
  let serverWriter: Writer | null = null;
  const server = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(s) {
        serverWriter = writeAll(s as Socket<unknown>, down, false);
        serverWriter.pump();
      },
      drain: () => serverWriter?.pump(),
      data: (s, d) => slowRead(s as Socket<unknown>, atServer, d, 4),
      end(s) {
        atServer.eof = true;
        // The upload is in: finish the download, then close.
        const finish = () => (serverWriter?.done() ? s.end() : setTimeout(finish, 5));
        finish();
      },
    },
  });
  listeners.push(server as TCPSocketListener<unknown>);
  const relayed = startRelay(server.port);

  let clientWriter: Writer | null = null;
  let peak = 0;
  const sample = setInterval(() => {
    peak = Math.max(peak, ...relayed.outs.map((o) => o.queued));
  }, 1);
  await Bun.connect({
    hostname: "127.0.0.1",
    port: relayed.port,
    allowHalfOpen: true,
    socket: {
      open(s) {
        clientWriter = writeAll(s as Socket<unknown>, up, true);
        clientWriter.pump();
      },
      drain: () => clientWriter?.pump(),
      data: (s, d) => slowRead(s as Socket<unknown>, atClient, d, 4),
      end: () => {
        atClient.eof = true;
      },
      close: (_s, err) => {
        atClient.closed = true;
        atClient.error = err;
      },
    },
  });
  await waitFor("both directions to finish", () => atClient.closed && atServer.eof, 120_000);
  clearInterval(sample);
  expect([atServer.bytes, atServer.hash.digest("hex")]).toEqual([up.length, sha(up)]);
  expect([atClient.bytes, atClient.hash.digest("hex")]).toEqual([down.length, sha(down)]);
  expect(atClient.error).toBeUndefined();
  // Bun hands over up to about half a MiB per read; a relay that did not pause would hold tens of MiB.
  expect(peak).toBeLessThan(4 * MiB);
}, 180_000);

test("a client that sends its EOF first still gets the whole answer, and the upstream sees that EOF", async () => {
  const answer = body(8 * MiB, 3);
  const atServer = received();
  const server = Bun.listen<Writer | undefined>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      data: (s, d) => slowRead(s as Socket<unknown>, atServer, d, 0),
      end(s) {
        // Answers only after the request's EOF, like a server reading a request to its end.
        atServer.eof = true;
        const w = writeAll(s as Socket<unknown>, answer, true);
        s.data = w;
        w.pump();
      },
      drain: (s) => s.data?.pump(),
    },
  });
  listeners.push(server as TCPSocketListener<unknown>);
  const relayed = startRelay(server.port);
  const atClient = received();
  await Bun.connect({
    hostname: "127.0.0.1",
    port: relayed.port,
    allowHalfOpen: true,
    socket: {
      open(s) {
        s.write("request");
        s.shutdown();
      },
      data: (s, d) => slowRead(s as Socket<unknown>, atClient, d, 2),
      end: () => {
        atClient.eof = true;
      },
      close: () => {
        atClient.closed = true;
      },
    },
  });
  await waitFor("the answer to arrive", () => atClient.closed, 60_000);
  expect(atServer.eof).toBe(true);
  expect(atServer.bytes).toBe("request".length);
  expect([atClient.bytes, atClient.hash.digest("hex")]).toEqual([answer.length, sha(answer)]);
});

test("a client that goes away mid-download takes the upstream connection with it", async () => {
  let upstreamClosed = false;
  const server = Bun.listen<Writer | undefined>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        const w = writeAll(s as Socket<unknown>, body(32 * MiB, 4), true);
        s.data = w;
        w.pump();
      },
      drain: (s) => s.data?.pump(),
      close: () => {
        upstreamClosed = true;
      },
    },
  });
  listeners.push(server as TCPSocketListener<unknown>);
  const relayed = startRelay(server.port);
  let got = 0;
  await Bun.connect({
    hostname: "127.0.0.1",
    port: relayed.port,
    socket: {
      data(s, d) {
        got += d.length;
        if (got > MiB) s.terminate();
      },
    },
  });
  await waitFor("the upstream connection to close", () => upstreamClosed, 20_000);
  expect(got).toBeLessThan(32 * MiB);
});

test("an upstream that resets mid-stream resets the client's connection instead of ending it cleanly", async () => {
  const server = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.write(body(256 * 1024, 5));
        setTimeout(() => s.terminate(), 50);
      },
      data() {},
    },
  });
  listeners.push(server as TCPSocketListener<unknown>);
  const relayed = startRelay(server.port);
  const atClient = received();
  await Bun.connect({
    hostname: "127.0.0.1",
    port: relayed.port,
    allowHalfOpen: true,
    socket: {
      data: (s, d) => slowRead(s as Socket<unknown>, atClient, d, 0),
      end: () => {
        atClient.eof = true;
      },
      close: (_s, err) => {
        atClient.closed = true;
        atClient.error = err;
      },
    },
  });
  await waitFor("the client's connection to close", () => atClient.closed, 20_000);
  expect(atClient.eof).toBe(false);
  expect(atClient.error).toBeDefined();
});

test("Outgoing keeps what the kernel does not take, in order, writes it on drain, and sends EOF only after it", async () => {
  const data = body(32 * MiB, 6);
  let queuedAtSomePoint = false;
  let afterEnd = true;
  const server = Bun.listen<Outgoing | undefined>({
    hostname: "127.0.0.1",
    port: 0,
    allowHalfOpen: true,
    socket: {
      open(s) {
        const out = new Outgoing(s as Socket<unknown>);
        s.data = out;
        for (let i = 0; i < data.length; i += MiB)
          if (!out.write(data.subarray(i, i + MiB))) queuedAtSomePoint = true;
        out.end();
        afterEnd = out.write("dropped: written after end()");
      },
      drain: (s) => s.data?.drain(),
      data() {},
    },
  });
  listeners.push(server as TCPSocketListener<unknown>);
  const atClient = received();
  await Bun.connect({
    hostname: "127.0.0.1",
    port: server.port,
    allowHalfOpen: true,
    socket: {
      data: (s, d) => slowRead(s as Socket<unknown>, atClient, d, 2),
      end(s) {
        atClient.eof = true;
        s.shutdown();
      },
      close: () => {
        atClient.closed = true;
      },
    },
  });
  await waitFor("the client to read to its EOF", () => atClient.eof, 60_000);
  expect(queuedAtSomePoint).toBe(true);
  expect(afterEnd).toBe(true);
  expect([atClient.bytes, atClient.hash.digest("hex")]).toEqual([data.length, sha(data)]);
});

import { Outgoing } from "./outgoing.ts";

/*
 * The byte relay behind the job's egress proxy (CONNECT tunnels and plain-http requests to the hosts a
 * job was allowed with --egress). Which hosts may be reached is decided by the caller; this file only
 * moves bytes, and moves every one of them.
 */

/** The events of one relayed socket: its handlers must pass each of them on. */
export interface RelayEnd {
  data(chunk: Uint8Array): void;
  drain(): void;
  /** The peer sent its EOF (FIN). */
  end(): void;
  /** The socket is closed, with the error that closed it if any. */
  close(error?: Error): void;
}

/**
 * Relays bytes both ways between two sockets until both are closed. A socket is read only while the
 * other side's queue is empty, so memory stays at about one read per direction whatever the speed of
 * either reader; an EOF is passed on once the bytes before it are out, so half-closed connections work;
 * a socket that closes with an error resets the other, so a cut stream never looks complete.
 */
export function relay(a: Outgoing, b: Outgoing): [RelayEnd, RelayEnd] {
  const side = (self: Outgoing, other: Outgoing): RelayEnd => {
    other.onEmpty = () => {
      if (!self.closed) self.socket.resume();
    };
    return {
      data(chunk) {
        // The other side is gone, so these bytes cannot be delivered: reset rather than read forever.
        if (other.closed) return self.socket.terminate();
        if (!other.write(chunk)) self.socket.pause();
      },
      drain: () => self.drain(),
      end: () => other.end(),
      close(error) {
        self.markClosed();
        if (other.closed) return;
        if (error) return other.socket.terminate();
        other.end();
        // Anything the other side still sends has nowhere to go; reading it lets `data` reset that side
        // instead of leaving it paused, and open, forever.
        other.socket.resume();
      },
    };
  };
  return [side(a, b), side(b, a)];
}

/**
 * Connects to `addr:port` and relays between it and the job's connection `job` (which the caller has
 * paused). `onRelay` runs as soon as the connection is open, before any upstream byte is handled: it gets
 * the job side's events sink and may push bytes that arrived early into it. Rejects when the connection
 * cannot be made; when the job's connection closed meanwhile, the upstream one is closed again.
 */
export async function connectUpstream(
  job: Outgoing,
  addr: string,
  port: number,
  onRelay: (jobEnd: RelayEnd) => void,
): Promise<void> {
  let up: RelayEnd | null = null;
  await Bun.connect<undefined>({
    hostname: addr,
    port,
    // Half-open, so an EOF from one side does not close the other before the bytes queued for it are out.
    allowHalfOpen: true,
    socket: {
      open(sock) {
        if (job.closed) return sock.terminate();
        const out = new Outgoing(sock);
        const [jobEnd, upEnd] = relay(job, out);
        up = upEnd;
        onRelay(jobEnd);
        if (out.queued === 0 && !job.closed) job.socket.resume();
      },
      data: (_s, chunk) => up?.data(chunk),
      drain: () => up?.drain(),
      end: () => up?.end(),
      close: (_s, error) => up?.close(error),
    },
  });
}

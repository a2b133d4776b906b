import type { Socket } from "bun";

/**
 * The bytes waiting to go out on one socket. Bun's `socket.write()` takes only what the kernel accepts at
 * that moment and returns how many bytes that was; the rest is kept here, in order, and written again on
 * the socket's `drain`. `end()` shuts the write side only once everything written before it is out.
 */
export class Outgoing {
  /** Called when the queue has emptied after holding bytes: a reader paused for it may resume. */
  onEmpty: () => void = () => {};
  private readonly queue: Uint8Array[] = [];
  private bytes = 0;
  private ending = false;
  private gone = false;

  constructor(readonly socket: Socket<unknown>) {}

  /** Bytes accepted by `write` that the kernel has not taken yet. */
  get queued(): number {
    return this.bytes;
  }

  /** True once `end()` was called: the write side is shut, or will be once the queue is out. */
  get ended(): boolean {
    return this.ending;
  }

  /** True once the socket is closed: nothing written now can be delivered. */
  get closed(): boolean {
    return this.gone;
  }

  /**
   * Writes `data` after anything already queued. Returns true when nothing is left waiting, false when
   * bytes are queued (the caller should stop reading its source until `onEmpty`). Bytes written after
   * `end()` or to a closed socket are dropped: there is no one left to deliver them to.
   */
  write(data: Uint8Array | string): boolean {
    if (this.gone || this.ending) return true;
    const bytes = typeof data === "string" ? Buffer.from(data) : data;
    if (this.bytes > 0) {
      this.queue.push(bytes);
      this.bytes += bytes.length;
      return false;
    }
    const n = this.socket.write(bytes);
    if (n < 0) {
      this.markClosed();
      return true;
    }
    if (n === bytes.length) return true;
    this.queue.push(bytes.subarray(n));
    this.bytes += bytes.length - n;
    return false;
  }

  /** Writes what the kernel takes now; the socket's `drain` handler must call this. */
  drain(): void {
    if (this.bytes === 0) return;
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const n = this.socket.write(head);
      if (n < 0) {
        this.markClosed();
        return;
      }
      this.bytes -= n;
      if (n < head.length) {
        this.queue[0] = head.subarray(n);
        return;
      }
      this.queue.shift();
    }
    if (this.ending) this.socket.shutdown();
    this.onEmpty();
  }

  /** Shuts the socket's write side (FIN) once everything queued is written; later writes are dropped. */
  end(): void {
    if (this.ending || this.gone) return;
    this.ending = true;
    // shutdown(), not end(): Bun's end() closes the whole socket, and closing one that still has unread
    // bytes coming in resets the connection, which loses what the peer had not read yet.
    if (this.bytes === 0) this.socket.shutdown();
  }

  /** The socket closed: whatever is still queued can no longer be delivered and is let go. */
  markClosed(): void {
    this.gone = true;
    this.queue.length = 0;
    this.bytes = 0;
  }
}

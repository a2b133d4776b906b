/*
 * Connections that outlive the request that authenticated them (a worker's websocket, a followed log)
 * are registered here under the token that opened them, so that revoking the token, or the token
 * reaching its expiry, ends them too: a credential checked only at the door would keep working for as
 * long as the connection stays up.
 */

/** One open connection: how to end it, and the token it stands on. */
interface Session {
  tokenId: string;
  end(why: string): void;
  timer: Timer | null;
}

/** The open long-lived connections of a master, by the token that opened them. */
export interface Sessions {
  /**
   * Registers a connection opened with token `tokenId`, which `end` closes; it is ended at `expiresAt`
   * (when the token has one) and by `revoke`. The returned function unregisters it (call it on close).
   */
  open(tokenId: string, expiresAt: number | null, end: (why: string) => void): () => void;
  /** Ends every connection opened with `tokenId`; returns how many there were. */
  revoke(tokenId: string): number;
  /** How many connections are open (tests, metrics). */
  size(): number;
}

/** An empty set of sessions. */
export function createSessions(): Sessions {
  const all = new Set<Session>();
  const close = (s: Session, why: string) => {
    if (!all.delete(s)) return;
    if (s.timer) clearTimeout(s.timer);
    s.end(why);
  };
  return {
    open(tokenId, expiresAt, end) {
      const s: Session = { tokenId, end, timer: null };
      all.add(s);
      if (expiresAt !== null) {
        // setTimeout takes at most 2^31-1 ms (about 24.8 days); a later expiry is checked again then.
        const arm = () => {
          const left = expiresAt - Date.now();
          if (left <= 0) return close(s, "the token expired");
          s.timer = setTimeout(arm, Math.min(left, 2 ** 31 - 1));
          s.timer.unref?.();
        };
        arm();
      }
      return () => {
        if (all.delete(s) && s.timer) clearTimeout(s.timer);
      };
    },
    revoke(tokenId) {
      let n = 0;
      for (const s of [...all]) {
        if (s.tokenId !== tokenId) continue;
        close(s, "the token was revoked");
        n++;
      }
      return n;
    },
    size: () => all.size,
  };
}

/*
 * How a worker's own requests reach the master as that worker. Over plain HTTP a worker presents a bearer
 * token; on a TLS master it presents its client certificate in the handshake and, because Bun's server
 * cannot show that certificate to the handler, the certificate and a signature over each request in
 * headers (src/tls/proof.ts). Everything that talks to the master for the worker (its websocket, artifact
 * uploads, artifact downloads for templates) asks this object, so none of them knows which it is.
 */

/** The `tls` options of fetch and WebSocket: the CA the master is verified against, and the client certificate. */
export interface ClientTls {
  ca: string;
  cert: string;
  key: string;
}

/** A worker's credentials towards its master. */
export interface MasterAuth {
  /** The headers that identify the worker on a request of `method` to `url`. */
  headers(method: string, url: string): Promise<Record<string, string>>;
  /** The TLS options of every connection to the master; undefined over plain HTTP. Read anew per connection: a renewal replaces them. */
  tls(): ClientTls | undefined;
}

/** Credentials of a worker that presents a bearer token (a worker token over plain HTTP, or `up`'s admin token). */
export function bearerAuth(token: string): MasterAuth {
  const headers = { authorization: `Bearer ${token}` };
  return { headers: async () => headers, tls: () => undefined };
}

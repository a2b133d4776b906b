import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ConsolaInstance } from "consola";
import { AppError } from "../lib/errors.ts";
import type { ClientTls, MasterAuth } from "../protocol/master-auth.ts";
import { existsPrivate, writeAtomic } from "../tls/files.ts";
import { clientTls, joinMaster, loadIdentity, renewIfDue } from "../tls/join.ts";
import { hashJoinSecret, parseJoinToken } from "../tls/join-token.ts";
import { proofHeaders, type WorkerIdentity } from "../tls/proof.ts";
import { commonName, fingerprint, importSigningKey, x509 } from "../tls/x509.ts";

/*
 * The worker's certificate towards a TLS master, and when it changes. The protocol (pinning the CA,
 * enrolling, renewing) is src/tls/join.ts; this file decides:
 *   - at start, whether the identity kept in DATA/worker/tls serves (reused at every restart, whether or
 *     not --join is still given) or the worker joins with its join token: when it has none, when it is for
 *     another name or another master, when it expired, or when the join token is not the one it joined
 *     with (an operator who gives a new token means a new enrollment, e.g. after `kiln workers rm`);
 *   - later, when to renew: a pass every thirtieth of the certificate's life asks renewIfDue, which renews
 *     once a third is left. The caller reconnects after a renewal so the master sees the new certificate.
 */

/** The file that records which join token the identity came from (the SHA-256 of its secret, never the secret). */
const JOINED_WITH = "joined-with";

/** A worker's certificate credentials, renewable in place. */
export interface CertificateAuth extends MasterAuth {
  /** Renews the certificate when a third of its life is left; true when it did. */
  renewIfDue(): Promise<boolean>;
  /** How often renewIfDue is worth asking: a thirtieth of the certificate's life, between 1 s and 1 h. */
  checkEveryMs: number;
}

/** Where a worker keeps its key, certificate and the pinned CA: DATA/worker/tls (0700; keys 0600). */
export const identityDir = (data: string) => join(data, "worker", "tls");

/** Why the saved identity cannot be used as it is, or "" when it can. */
function staleness(id: WorkerIdentity, name: string, token: string | undefined, dir: string): string {
  const cert = new x509.X509Certificate(id.certPem);
  const cn = commonName(cert);
  if (cn !== name) return `its certificate is for worker ${cn}, not ${name}`;
  if (cert.notAfter.getTime() <= Date.now())
    return `its certificate expired at ${cert.notAfter.toISOString()}`;
  if (token === undefined) return "";
  const pinned = parseJoinToken(token).fingerprint;
  const ca = fingerprint(new x509.X509Certificate(id.caPem));
  if (ca !== pinned)
    return `its certificate is from another master (CA ${ca}; the join token pins ${pinned})`;
  const file = join(dir, JOINED_WITH);
  const used = existsPrivate(file) ? readFileSync(file, "utf8").trim() : "";
  if (used !== hashJoinSecret(parseJoinToken(token).secret)) return "the join token given is a new one";
  return "";
}

/**
 * The certificate credentials of worker `name` for the TLS master at `masterUrl`: the identity saved in
 * `dir`, or a new one joined with `join` when that one does not serve (see above). Throws TLS_NOT_ENROLLED
 * saying what to do when the worker must join and has no join token, and the master's refusal (a used,
 * expired or revoked token, a name already enrolled) as it came.
 */
export async function certificateAuth(o: {
  masterUrl: string;
  dir: string;
  name: string;
  join?: string;
  log: ConsolaInstance;
}): Promise<CertificateAuth> {
  // A damaged or API token is said before anything else, whatever the saved identity.
  const token = o.join || undefined;
  if (token) parseJoinToken(token);
  let id = loadIdentity(o.dir);
  const why = id ? staleness(id, o.name, token, o.dir) : "it has no certificate yet";
  if (why) {
    if (!token)
      throw new AppError(
        "TLS_NOT_ENROLLED",
        `worker ${o.name} cannot connect to ${o.masterUrl}: ${why}. Join with --join TOKEN (or --join-file FILE, or KILN_JOIN), a token from \`kiln token create --role worker\` on the master`,
      );
    o.log.info(`joining ${o.masterUrl} as ${o.name}: ${why}`);
    id = await joinMaster({ masterUrl: o.masterUrl, token, worker: o.name, dir: o.dir });
    writeAtomic(join(o.dir, JOINED_WITH), `${hashJoinSecret(parseJoinToken(token).secret)}\n`, 0o600);
    const cert = new x509.X509Certificate(id.certPem);
    o.log.info(
      `joined ${o.masterUrl} as ${o.name}: certificate ${cert.serialNumber} until ${cert.notAfter.toISOString()}, kept in ${o.dir}`,
    );
  }
  // The identity and its imported key change together, in one assignment, so no request is signed with
  // one certificate's key and sent with the other certificate.
  const load = async (identity: WorkerIdentity) => ({
    id: identity,
    key: await importSigningKey(identity.keyPem, join(o.dir, "worker.pem")),
  });
  let current = await load(id!);
  const first = new x509.X509Certificate(current.id.certPem);
  const life = first.notAfter.getTime() - first.notBefore.getTime();
  return {
    headers: (method, url) =>
      proofHeaders({ certPem: current.id.certPem, key: current.key }, method, new URL(url).pathname),
    tls: (): ClientTls => clientTls(current.id),
    checkEveryMs: Math.min(3_600_000, Math.max(1000, Math.round(life / 30))),
    async renewIfDue() {
      if (!(await renewIfDue({ masterUrl: o.masterUrl, dir: o.dir }))) return false;
      current = await load(loadIdentity(o.dir)!);
      const cert = new x509.X509Certificate(current.id.certPem);
      o.log.info(
        `renewed this worker's certificate: ${cert.serialNumber} until ${cert.notAfter.toISOString()}`,
      );
      return true;
    },
  };
}

// Repository signing keys, kept by gpg in one home directory of the master (DATA/repo-key, mode 0700): the
// master's own key, generated on first use, and keys operators import for particular repositories.
import { existsSync } from "node:fs";
import { chmod, mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { AppError } from "../lib/errors.ts";
import type { Signer } from "./format.ts";

/*
 * gpg needs its agent for every secret-key operation, and the agent is a daemon that outlives the gpg
 * that started it. Kiln does not leave one running: every gpg call goes through one queue, and when the
 * queue empties the agent is told to stop (`gpgconf --kill`), so between publishes no process holds the
 * keys. Starting it again costs a few tens of milliseconds per publish.
 */

/** The master's repository keys. */
export interface KeyRing {
  /** The home directory gpg keeps them in. */
  readonly dir: string;
  /** A signer with the key `fingerprint`, or the master's own key (made on first use) when null. */
  signer(fingerprint: string | null): Signer;
  /**
   * Imports an operator's secret key (ASCII-armoured or binary OpenPGP) and returns its fingerprint and
   * user id. Refuses, changing nothing, a file without exactly one secret primary key, and a key gpg
   * cannot sign with unattended (one protected by a passphrase).
   */
  importKey(key: Uint8Array): Promise<{ fingerprint: string; uid: string }>;
  /** The fingerprint of the master's own key, making the key if there is none yet. */
  defaultFingerprint(): Promise<string>;
  /** Waits for every gpg call under way and stops the agent. */
  close(): Promise<void>;
}

// gpg's user id for the key Kiln makes; the host name tells apart the keys of several masters.
const DEFAULT_UID = () => `Kiln repository signing key (${hostname()}) <kiln@${hostname()}>`;
// The file naming the master's own key among those gpg keeps.
const DEFAULT_FILE = "kiln-default-key";

interface Result {
  code: number;
  out: string;
  err: string;
}

/** Opens (creating when missing) the key ring in `dir`. */
export function openKeyRing(dir: string): KeyRing {
  const path = process.env.PATH ?? "/usr/bin:/bin";
  let queue: Promise<unknown> = Promise.resolve();
  let pending = 0;
  // An agent left by a master killed mid-signature is stopped by the first queue that drains.
  let agentMayRun = existsSync(dir);
  // Public keys by fingerprint: every publish writes key.asc, and a key never changes.
  const exported = new Map<string, string>();

  const gpgPath = () => {
    const gpg = Bun.which("gpg", { PATH: path });
    if (!gpg)
      throw new AppError(
        "GPG_MISSING",
        "signing repository metadata needs gpg on the master: install the Debian package gnupg",
        { status: 500 },
      );
    return gpg;
  };

  const spawn = async (argv: string[], stdin?: Uint8Array | string): Promise<Result> => {
    const proc = Bun.spawn(argv, {
      stdin:
        stdin === undefined ? "ignore" : typeof stdin === "string" ? new TextEncoder().encode(stdin) : stdin,
      stdout: "pipe",
      stderr: "pipe",
      env: { PATH: path, LC_ALL: "C", GNUPGHOME: dir },
    });
    const [out, err, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    return { code, out, err };
  };

  const gpg = (args: string[], stdin?: Uint8Array | string) => {
    agentMayRun = true;
    return spawn(
      [
        gpgPath(),
        "--homedir",
        dir,
        "--batch",
        "--no-tty",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        ...args,
      ],
      stdin,
    );
  };

  const prepare = async () => {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  };

  // Files gpg made readable by others (pubring.kbx is 0644 by default) are made private: the directory
  // is the master's alone.
  const tighten = async () => {
    for (const name of await readdir(dir)) {
      const p = join(dir, name);
      const st = await stat(p).catch(() => null);
      if (st?.isFile() && (st.mode & 0o077) !== 0) await chmod(p, 0o600);
    }
  };

  /** Runs `fn` in the queue; the agent is stopped once nothing else waits. */
  const run = <T>(fn: () => Promise<T>): Promise<T> => {
    pending++;
    const next = queue.then(async () => {
      try {
        await prepare();
        return await fn();
      } finally {
        pending--;
        if (pending === 0 && agentMayRun) {
          agentMayRun = false;
          await spawn(["gpgconf", "--homedir", dir, "--kill", "gpg-agent"]).catch(() => {});
        }
      }
    });
    queue = next.catch(() => {});
    return next;
  };

  const failed = (what: string, r: Result) =>
    new AppError("SIGNING_FAILED", `${what}: gpg said: ${r.err.trim().split("\n").slice(-3).join("; ")}`, {
      status: 500,
    });

  const ensureDefault = async (): Promise<string> => {
    const file = join(dir, DEFAULT_FILE);
    const known = await readFile(file, "utf8").catch(() => "");
    if (/^[0-9A-F]{40,64}\n?$/.test(known)) return known.trim();
    // Ed25519: apt (gpgv) and dnf (librepo's gpgme) verify it, and it is made instantly.
    const made = await gpg(["--quick-gen-key", DEFAULT_UID(), "ed25519", "sign", "never"]);
    if (made.code !== 0) throw failed("making the master's repository signing key failed", made);
    const fpr = /^fpr:+([0-9A-F]{40,64}):/m.exec(
      (await gpg(["--with-colons", "--list-secret-keys", DEFAULT_UID()])).out,
    )?.[1];
    if (!fpr) throw new AppError("SIGNING_FAILED", "gpg made a key but does not list it", { status: 500 });
    await writeFile(file, `${fpr}\n`, { mode: 0o600 });
    await tighten();
    return fpr;
  };

  const sign = async (fingerprint: string | null, args: string[], data: string | Uint8Array) => {
    const fpr = fingerprint ?? (await ensureDefault());
    const r = await gpg(["--local-user", fpr, "--armor", "--digest-algo", "SHA512", ...args], data);
    if (r.code !== 0) throw failed(`signing with key ${fpr} failed`, r);
    return r.out;
  };

  return {
    dir,
    signer(fingerprint) {
      return {
        clearsign: (text) => run(() => sign(fingerprint, ["--clearsign"], text)),
        detachSign: (data) => run(() => sign(fingerprint, ["--detach-sign"], data)),
        publicKey: () =>
          run(async () => {
            const fpr = fingerprint ?? (await ensureDefault());
            const known = exported.get(fpr);
            if (known) return known;
            const r = await gpg(["--armor", "--export", fpr]);
            if (r.code !== 0 || !r.out.includes("BEGIN PGP PUBLIC KEY BLOCK"))
              throw failed(`exporting key ${fpr} failed`, r);
            exported.set(fpr, r.out);
            return r.out;
          }),
      };
    },
    defaultFingerprint: () => run(ensureDefault),
    importKey: (key) =>
      run(async () => {
        const shown = await gpg(["--with-colons", "--import-options", "show-only", "--import"], key);
        const lines = shown.out.split("\n");
        const primaries = lines.filter((l) => l.startsWith("sec:") || l.startsWith("pub:"));
        const secret = lines.filter((l) => l.startsWith("sec:"));
        if (shown.code !== 0 || primaries.length === 0)
          throw new AppError(
            "KEY_INVALID",
            "the file holds no OpenPGP key: export one with `gpg --export-secret-keys --armor KEYID`",
          );
        if (secret.length === 0)
          throw new AppError(
            "KEY_INVALID",
            "the file holds only a public key: signing needs the secret key (`gpg --export-secret-keys --armor KEYID`)",
          );
        if (primaries.length > 1)
          throw new AppError(
            "KEY_INVALID",
            "the file holds more than one key: export just the one to sign with",
          );
        const at = lines.indexOf(secret[0] as string);
        const fpr = /^fpr:+([0-9A-F]{40,64}):/.exec(
          lines.slice(at).find((l) => l.startsWith("fpr:")) ?? "",
        )?.[1];
        const uid = lines.find((l) => l.startsWith("uid:"))?.split(":")[9] ?? "";
        if (!fpr) throw new AppError("KEY_INVALID", "gpg shows no fingerprint for the key in the file");
        const imported = await gpg(["--import"], key);
        if (imported.code !== 0) throw failed("importing the key failed", imported);
        await tighten();
        // A trial signature: a key behind a passphrase would fail every publish later, unattended.
        const trial = await gpg(["--local-user", fpr, "--armor", "--detach-sign"], "kiln");
        if (trial.code !== 0) {
          await gpg(["--yes", "--delete-secret-and-public-key", fpr]);
          throw new AppError(
            "KEY_INVALID",
            "gpg cannot sign with this key unattended (is it protected by a passphrase? remove it with `gpg --passwd KEYID` on a copy, then import that)",
          );
        }
        return { fingerprint: fpr, uid };
      }),
    close: () => run(async () => {}),
  };
}

import { join } from "node:path";
import type { Subprocess } from "bun";

/*
 * An upstream for the egress proxy that is not on loopback (the proxy refuses loopback on purpose): the
 * HTTP server in integration/egress-upstream.py, run in a network namespace of its own reached through a
 * veth pair on 198.18.0.0/15, the range reserved for benchmarking (RFC 2544). Root only.
 */

export interface NetnsUpstream {
  /** HOST:PORT, as a job's --egress names it. */
  address: string;
  /** Stops the server and removes the namespace and the veth pair; safe after a half-done start. */
  stop(): Promise<void>;
}

function ip(...args: string[]) {
  const p = Bun.spawnSync(["ip", ...args], { stderr: "pipe" });
  if (p.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${p.stderr.toString().trim()}`);
}

/**
 * Starts the upstream serving `blob` at /blob, reading uploads at /sink no faster than `rate` bytes a
 * second (0: as fast as they come). `tag` (a few letters) keeps the namespace and links of concurrent
 * users apart. Resolves once the server listens.
 */
export async function startNetnsUpstream(blob: string, rate: number, tag: string): Promise<NetnsUpstream> {
  const id = `${tag}${process.pid % 100000}`;
  const ns = `kiln-${id}`;
  const veth = id.slice(0, 13); // link names are at most 15 bytes, and get a one-letter suffix
  // A /30 of its own per process, so two runs on one host do not share addresses.
  const net = `198.18.${process.pid % 256}`;
  const port = 18080;
  let server: Subprocess | null = null;
  const stop = async () => {
    server?.kill("SIGKILL");
    await server?.exited;
    // Deleting the namespace deletes its end of the pair and with it ours; ours is deleted explicitly as
    // well, and each failure ignored, because a start may have stopped half way.
    Bun.spawnSync(["ip", "netns", "del", ns], { stderr: "ignore" });
    Bun.spawnSync(["ip", "link", "del", `${veth}h`], { stderr: "ignore" });
  };
  try {
    ip("netns", "add", ns);
    ip("link", "add", `${veth}h`, "type", "veth", "peer", "name", `${veth}n`);
    ip("link", "set", `${veth}n`, "netns", ns);
    ip("addr", "add", `${net}.1/30`, "dev", `${veth}h`);
    ip("link", "set", `${veth}h`, "up");
    ip("-n", ns, "addr", "add", `${net}.2/30`, "dev", `${veth}n`);
    ip("-n", ns, "link", "set", `${veth}n`, "up");
    ip("-n", ns, "link", "set", "lo", "up");
    const script = join(import.meta.dir, "integration", "egress-upstream.py");
    server = Bun.spawn(
      ["ip", "netns", "exec", ns, "python3", script, `${net}.2`, String(port), blob, "--rate", String(rate)],
      { stdout: "pipe", stderr: "inherit" },
    );
    const reader = (server.stdout as ReadableStream<Uint8Array>).getReader();
    const first = await reader.read();
    reader.releaseLock();
    if (!new TextDecoder().decode(first.value).startsWith("ready"))
      throw new Error(`the upstream in ${ns} did not start (exit ${await server.exited})`);
  } catch (err) {
    await stop();
    throw err;
  }
  return { address: `${net}.2:${port}`, stop };
}

/** Names of network namespaces and links left on the host whose name contains `tag`. */
export function netnsLeftovers(tag: string): string[] {
  const names = [
    ...Bun.spawnSync(["ip", "netns", "list"]).stdout.toString().split("\n"),
    ...Bun.spawnSync(["ip", "-o", "link"])
      .stdout.toString()
      .split("\n")
      .map((l) => l.split(":")[1]?.trim() ?? ""),
  ];
  return names.filter((n) => n.includes(tag));
}

import type { ConsolaInstance } from "consola";
import type { Config } from "../config/schema.ts";
import type { Store } from "../store/open.ts";
import type { ArtifactService } from "./artifacts.ts";
import type { LogStore } from "./logs.ts";
import type { Registry } from "./registry.ts";
import type { RepoService } from "./repos.ts";
import type { Sessions } from "./sessions.ts";
import type { StorageHealth } from "./storage-health.ts";
import type { MasterTls } from "./tls.ts";

/** What every part of the master shares: config, store, logs, the live worker registry. */
export interface MasterContext {
  cfg: Config;
  dataDir: string;
  store: Store;
  logs: LogStore;
  /** Artifact uploads in progress and the blob stores behind stored ones. */
  artifacts: ArtifactService;
  registry: Registry;
  /** The package repositories' builder: publishes, snapshots, signing keys. */
  repos: RepoService;
  /** Open websockets and followed logs by the token that opened them, so a revocation ends them. */
  sessions: Sessions;
  log: ConsolaInstance;
  /** Whether the master can write (its disk is not full); the lease reaper heeds it. */
  storage: StorageHealth;
  /** Asks the dispatcher for a pass; cheap to call often, passes never overlap. */
  dispatch(): void;
  /** Resolves when every dispatch asked for so far has been carried out (tests, bench). */
  dispatched(): Promise<void>;
  startedAt: number;
  /** The CA, enrollment and worker certificates when the master serves TLS; null over plain HTTP. */
  tls: MasterTls | null;
}

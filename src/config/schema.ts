/*
 * The one typed config. Every key is declared here with its type, default and a sentence on why; the
 * loader refuses anything not declared. appliance/kiln.toml documents the same keys and a test keeps the
 * two in step.
 */

export type KeyType = "string" | "int" | "bool" | "duration" | "size" | "list" | "enum" | "listen" | "slots";

/** One slot of a worker, from `[[worker.slots]]` (see appliance/kiln.toml). */
export interface SlotConfig {
  name: string;
  /** Names a job can ask for with --needs. */
  resources: string[];
  /** Host device nodes exposed in the job's /dev (and allowed by the devices controller). */
  devices: string[];
  /** Supplementary groups (names or gids) the job's user gets, e.g. the group that owns the devices. */
  groups: string[];
  memory: number | null;
  cpus: number | null;
  pids: number | null;
  /** A command run on the host before the slot is offered; a non-zero exit holds the slot. */
  health_check: string;
}

export interface KeySpec {
  type: KeyType;
  default: unknown;
  values?: readonly string[];
  min?: number;
  max?: number;
}

export const SCHEMA = {
  node: {
    // Where every role keeps its state; service units point BUN_TMPDIR here too.
    data: { type: "string", default: "" },
  },
  log: {
    format: { type: "enum", default: "auto", values: ["auto", "human", "json"] },
    level: { type: "enum", default: "info", values: ["error", "warn", "info", "debug", "trace"] },
  },
  master: {
    listen: { type: "listen", default: "127.0.0.1:7070" },
    db: { type: "string", default: "" },
    url: { type: "string", default: "" },
    heartbeat: { type: "duration", default: 5_000, min: 100 },
    lease: { type: "duration", default: 30_000, min: 500 },
    default_timeout: { type: "duration", default: 7_200_000, min: 1_000 },
    default_retries: { type: "int", default: 2, min: 0, max: 100 },
    // The most of one attempt's output the master keeps; past it the log says it was cut.
    log_max: { type: "size", default: 2 ** 30, min: 64 * 1024 },
    // Off by default so a loopback-only first start needs no certificates; remote workers need it on.
    tls: { type: "bool", default: false },
    // Empty: Kiln issues the server certificate from its own CA in DATA/tls.
    tls_cert: { type: "string", default: "" },
    tls_key: { type: "string", default: "" },
    // Empty: localhost, 127.0.0.1, ::1 and this host's name.
    tls_names: { type: "list", default: [] },
    // How long a worker's client certificate lives. A stolen key stops working within a month even if
    // nobody revokes it; a worker renews by itself once a third is left, so ten days offline are fine.
    tls_worker_lifetime: { type: "duration", default: 30 * 86_400_000, min: 10_000 },
    // The largest artifact the master takes: a disk image fits, a runaway job does not fill the disk.
    artifact_max: { type: "size", default: 64 * 2 ** 30, min: 1024 },
    // How long a connection may stay silent (src/master/idle.ts). Bun counts it in ticks of 4 s, so a
    // shorter one could fire before a once-a-second re-arm; it takes at most 255 s.
    idle_timeout: { type: "duration", default: 60_000, min: 5_000, max: 255_000 },
  },
  worker: {
    master: { type: "string", default: "http://127.0.0.1:7070" },
    name: { type: "string", default: "" },
    channels: { type: "list", default: ["default"] },
    arch: { type: "string", default: "" },
    capacity: { type: "int", default: 2, min: 1, max: 1024 },
    join: { type: "string", default: "" },
    runner: { type: "enum", default: "sandbox", values: ["process", "sandbox"] },
    slots: { type: "slots", default: [] },
    health_interval: { type: "duration", default: 60_000, min: 100 },
    // $KILN_OUT plus every upload of one job: a disk image or two fit, a runaway job cannot fill the disk.
    artifact_budget: { type: "size", default: 4 * 2 ** 30, min: 0 },
  },
  templates: {
    cache_size: { type: "size", default: 20 * 2 ** 30, min: 1 << 20 },
    // A minbase debootstrap takes a minute or two here; an hour leaves room for big --include lists and
    // slow mirrors while still ending a build that hangs.
    build_timeout: { type: "duration", default: 3_600_000, min: 1_000 },
    // dpkg and apt need a few hundred MiB; /tmp inside a build is a tmpfs counted here too.
    build_memory: { type: "size", default: 4 * 2 ** 30, min: 16 << 20 },
    // Enough for parallel maintainer scripts and apt's helpers; a fork bomb stops here.
    build_pids: { type: "int", default: 4096, min: 16, max: 1 << 22 },
  },
  storage: {
    // Where the master keeps artifact blobs: "fs" in its data dir, or "s3" in an S3-compatible bucket.
    backend: { type: "enum", default: "fs", values: ["fs", "s3"] },
    s3_endpoint: { type: "string", default: "" },
    s3_bucket: { type: "string", default: "" },
    // Most S3-compatible servers accept any region; AWS needs the bucket's own.
    s3_region: { type: "string", default: "us-east-1" },
    s3_access_key_id: { type: "string", default: "" },
    s3_secret_access_key: { type: "string", default: "" },
    // Before every key, so one bucket can hold several masters' blobs apart.
    s3_prefix: { type: "string", default: "kiln/" },
  },
  repos: {
    // A replaced snapshot stays readable this long for clients that read its index before the switch.
    snapshot_grace: { type: "duration", default: 600_000, min: 1_000 },
  },
  sandbox: {
    scratch: { type: "enum", default: "loop", values: ["loop", "lvm", "tmpfs"] },
    volume_group: { type: "string", default: "" },
    scratch_size: { type: "size", default: 1 << 30, min: 1 << 20 },
    scratch_max: { type: "size", default: 64 * 2 ** 30, min: 1 << 20 },
    uid_base: { type: "int", default: 1_500_000_000, min: 100_000, max: 4_000_000_000 },
    cgroup_parent: { type: "string", default: "kiln" },
    mask: { type: "list", default: [] },
  },
} as const satisfies Record<string, Record<string, KeySpec>>;

type Schema = typeof SCHEMA;
type ValueOf<K> = K extends { type: infer T } ? ValueOfType<T> : never;
type ValueOfType<T> = T extends "int" | "duration" | "size"
  ? number
  : T extends "bool"
    ? boolean
    : T extends "list"
      ? string[]
      : T extends "slots"
        ? SlotConfig[]
        : string;

/** The resolved config: every section and key present and typed. */
export type Config = { [S in keyof Schema]: { -readonly [K in keyof Schema[S]]: ValueOf<Schema[S][K]> } };

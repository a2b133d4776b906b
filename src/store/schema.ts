import { sql } from "drizzle-orm";
import { index, integer, primaryKey, real, sqliteTable, text } from "drizzle-orm/sqlite-core";

/*
 * The durable state of the master. Times are milliseconds since the epoch. A job's state changes only
 * through store/jobs.ts, each change one transaction that also appends to job_events, so a job's history
 * can be audited and "exactly one terminal state" checked.
 */

/** Jobs: the definition as submitted and the current attempt's state, lease and outcome. */
export const jobs = sqliteTable(
  "jobs",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    name: text("name").notNull(),
    project: text("project").notNull(),
    channel: text("channel").notNull(),
    arch: text("arch"),
    priority: integer("priority").notNull().default(0),
    command: text("command", { mode: "json" }).$type<string[]>().notNull(),
    env: text("env", { mode: "json" }).$type<Record<string, string>>().notNull(),
    timeoutMs: integer("timeout_ms").notNull(),
    memoryBytes: integer("memory_bytes"),
    cpus: real("cpus"),
    pids: integer("pids"),
    scratchBytes: integer("scratch_bytes"),
    root: text("root").notNull().default("host"),
    needs: text("needs", { mode: "json" }).$type<string[]>().notNull(),
    egress: text("egress", { mode: "json" }).$type<string[]>().notNull(),
    repo: text("repo"),
    // Publish into `repo` even a package that is not newer than the repository's (`submit --force`).
    repoForce: integer("repo_force", { mode: "boolean" }).notNull().default(false),
    // The repositories the job installs from (`submit --use-repo`, a recipe's `use_repos`): its API proxy
    // reaches these, and no other, with the job's credential; their apt/dnf sources are written before its
    // setup.
    useRepos: text("use_repos", { mode: "json" }).$type<string[]>().notNull().default([]),
    retries: integer("retries").notNull(),
    attempt: integer("attempt").notNull().default(1),
    state: text("state").notNull(),
    reason: text("reason"),
    message: text("message"),
    exitCode: integer("exit_code"),
    worker: text("worker"),
    slot: text("slot"),
    leaseExpiresAt: integer("lease_expires_at"),
    cancelRequested: integer("cancel_requested", { mode: "boolean" }).notNull().default(false),
    createdAt: integer("created_at").notNull(),
    assignedAt: integer("assigned_at"),
    startedAt: integer("started_at"),
    finishedAt: integer("finished_at"),
    peakMemoryBytes: integer("peak_memory_bytes"),
    cpuMs: integer("cpu_ms"),
    logSize: integer("log_size").notNull().default(0),
    // Where the current attempt's output starts in the job's log file; earlier attempts precede it.
    logBase: integer("log_base").notNull().default(0),
    retryOf: integer("retry_of"),
    progress: integer("progress"),
    progressMessage: text("progress_message"),
    submittedBy: text("submitted_by"),
    // The recipe version this job was rendered from and the values it got (all null for a plain job).
    // They point at a recipes row, which a `recipe rm` keeps, so the job can always say what it ran.
    // A template root that the job may write to: an overlay whose upper layer is on its scratch.
    writableRoot: integer("writable_root", { mode: "boolean" }).notNull().default(false),
    // A recipe's setup script, rendered: run as root on the job's writable overlay before the command.
    setup: text("setup"),
    recipe: text("recipe"),
    recipeVersion: integer("recipe_version"),
    recipeVars: text("recipe_vars", { mode: "json" }).$type<Record<string, string>>(),
    // The hash of the template the current attempt was given (null on the host root): what a rebuild
    // must run on again for its comparison to mean anything.
    templateHash: text("template_hash"),
    // A rebuild (`kiln rebuild`) names the job whose inputs it repeats, and the worker that job ran on,
    // which the dispatcher passes over while another worker could take it.
    rebuildOf: integer("rebuild_of"),
    avoidWorker: text("avoid_worker"),
    // Values given with `kiln submit --secret`: put into the job's environment, never shown by the API,
    // copied by a retry. Null for a job without any.
    secrets: text("secrets", { mode: "json" }).$type<Record<string, string>>(),
    // The sha256 of the current attempt's job credential (src/master/job-credential.ts): set when the
    // attempt is assigned, valid while the job is assigned or running.
    credentialHash: text("credential_hash"),
  },
  (t) => [
    // What a dispatch pass walks: the queued jobs of one channel and arch, in dispatch order. Partial, so
    // the millions of finished jobs a master accumulates are not in it.
    index("jobs_ready")
      .on(t.channel, t.arch, sql`${t.priority} DESC`, t.id)
      .where(sql`${t.state} = 'queued'`),
    index("jobs_state").on(t.state, t.id),
    index("jobs_worker").on(t.worker, t.state),
    index("jobs_project").on(t.project, t.id),
    // The rebuilds of a job, for its comparison; partial, as most jobs are no rebuild.
    index("jobs_rebuild_of").on(t.rebuildOf, t.id).where(sql`${t.rebuildOf} IS NOT NULL`),
  ],
);

/**
 * How many jobs are in each state, kept by triggers on `jobs` (migration 0013) in the transaction of every
 * insert, state change and delete: /metrics reads seven rows however many jobs are stored.
 */
export const jobCounts = sqliteTable("job_counts", {
  state: text("state").primaryKey(),
  n: integer("n").notNull().default(0),
});

/** Every state change of every job, appended in the same transaction as the change. */
export const jobEvents = sqliteTable(
  "job_events",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    jobId: integer("job_id").notNull(),
    attempt: integer("attempt").notNull(),
    at: integer("at").notNull(),
    state: text("state").notNull(),
    reason: text("reason"),
    message: text("message"),
    worker: text("worker"),
  },
  (t) => [index("job_events_job").on(t.jobId, t.id)],
);

/** Workers that registered: what they offer, when they were seen, and the operator's drain and hold. */
export const workers = sqliteTable("workers", {
  name: text("name").primaryKey(),
  arch: text("arch").notNull(),
  channels: text("channels", { mode: "json" }).$type<string[]>().notNull(),
  slots: text("slots", { mode: "json" }).$type<{ name: string; resources: string[] }[]>().notNull(),
  version: text("version").notNull(),
  connected: integer("connected", { mode: "boolean" }).notNull().default(false),
  firstSeen: integer("first_seen").notNull(),
  lastSeen: integer("last_seen").notNull(),
  draining: integer("draining", { mode: "boolean" }).notNull().default(false),
  holdReason: text("hold_reason"),
});

/** API tokens by id: the sha256 of the secret, the role, an optional project, expiry and revocation. */
export const tokens = sqliteTable("tokens", {
  id: text("id").primaryKey(),
  hash: text("hash").notNull().unique(),
  role: text("role").notNull(),
  project: text("project"),
  name: text("name").notNull(),
  createdAt: integer("created_at").notNull(),
  expiresAt: integer("expires_at"),
  revokedAt: integer("revoked_at"),
});

/*
 * Recipes are append-only: `recipe add` on an existing name inserts version N+1 and `recipe rm` only sets
 * deleted_at, so every job's (recipe, recipe_version) keeps pointing at the text it ran.
 */
export const recipes = sqliteTable(
  "recipes",
  {
    name: text("name").notNull(),
    version: integer("version").notNull(),
    description: text("description").notNull(),
    // The TOML as the operator wrote it, comments included, so `recipe show` can give it back.
    source: text("source").notNull(),
    // The validated definition (see src/master/recipes/definition.ts); what submits are rendered from.
    definition: text("definition", { mode: "json" }).$type<unknown>().notNull(),
    createdAt: integer("created_at").notNull(),
    createdBy: text("created_by"),
    deletedAt: integer("deleted_at"),
  },
  (t) => [primaryKey({ columns: [t.name, t.version] })],
);

/** A jobs row as read back. */
export type JobRow = typeof jobs.$inferSelect;
/** A workers row as read back. */
export type WorkerRow = typeof workers.$inferSelect;
/** A tokens row as read back. */
export type TokenRow = typeof tokens.$inferSelect;
/** A recipes row (one version of a recipe) as read back. */
export type RecipeRow = typeof recipes.$inferSelect;

/**
 * Build-root templates by name. `add` on an existing name replaces the recipe (a new hash: workers build
 * the new tree and evict the old one in time); jobs resolve the name when they are assigned.
 */
export const templates = sqliteTable("templates", {
  name: text("name").primaryKey(),
  hash: text("hash").notNull(),
  recipe: text("recipe", { mode: "json" }).$type<unknown>().notNull(),
  base: text("base"),
  createdAt: integer("created_at").notNull(),
  updatedAt: integer("updated_at").notNull(),
  createdBy: text("created_by"),
});

/** A templates row as read back. */
export type TemplateRow = typeof templates.$inferSelect;

/**
 * A job's artifacts: files it left in $KILN_OUT (or uploaded with `kiln job upload`), named per job. The
 * bytes are a blob in artifact_blobs, stored once however many jobs leave the same content.
 */
export const artifacts = sqliteTable(
  "artifacts",
  {
    jobId: integer("job_id").notNull(),
    name: text("name").notNull(),
    attempt: integer("attempt").notNull(),
    size: integer("size").notNull(),
    sha256: text("sha256").notNull(),
    createdAt: integer("created_at").notNull(),
    // The permission bits the file had on the worker (0644 for rows from before they were recorded).
    mode: integer("mode").notNull().default(0o644),
  },
  (t) => [primaryKey({ columns: [t.jobId, t.name] }), index("artifacts_sha256").on(t.sha256)],
);

/** An artifacts row as read back. */
export type ArtifactRow = typeof artifacts.$inferSelect;

/**
 * Releases: one artifact of a job promoted under an immutable tag. The file lives under
 * DATA/releases/TAG/ next to its SHA256SUMS, and is never removed by retention.
 */
export const releases = sqliteTable("releases", {
  tag: text("tag").primaryKey(),
  jobId: integer("job_id").notNull(),
  artifact: text("artifact").notNull(),
  file: text("file").notNull(),
  size: integer("size").notNull(),
  sha256: text("sha256").notNull(),
  project: text("project").notNull(),
  createdAt: integer("created_at").notNull(),
  createdBy: text("created_by"),
});

/** One release as stored. */
export type ReleaseRow = typeof releases.$inferSelect;

/**
 * The stored content behind artifacts, one row per sha256. Its references are the artifacts rows that
 * name it: a blob no row names any more is deleted from its store (see src/master/artifacts.ts).
 */
export const artifactBlobs = sqliteTable("artifact_blobs", {
  sha256: text("sha256").primaryKey(),
  size: integer("size").notNull(),
  // deb, rpm, image or other, read from the content (src/storage/kind.ts).
  kind: text("kind").notNull(),
  // The blob store that holds it: "fs" (the data dir) or "s3".
  store: text("store").notNull(),
  createdAt: integer("created_at").notNull(),
});

/** One stored blob as recorded. */
export type ArtifactBlobRow = typeof artifactBlobs.$inferSelect;

/**
 * Package repositories: one row per repository, with what its metadata depends on. `generation` counts
 * its published snapshots: DATA/repos/NAME/snapshots/GENERATION is the one `current` points at, and a
 * publish moves it on by exactly one in the same transaction that changes its packages.
 */
export const repos = sqliteTable("repos", {
  name: text("name").primaryKey(),
  // "deb" or "rpm" (src/repo/format.ts).
  format: text("format").notNull(),
  // The project that owns it (its submitters publish, its viewers read); null: every project's.
  project: text("project"),
  // Readable by anyone who reaches the master, without a token.
  public: integer("public", { mode: "boolean" }).notNull().default(false),
  // Debian: the suite and component of the sources.list line.
  dist: text("dist"),
  component: text("component"),
  archs: text("archs", { mode: "json" }).$type<string[]>().notNull(),
  // How many versions of each package (name and arch) it keeps, newest first.
  keep: integer("keep").notNull(),
  // The fingerprint of an operator's imported signing key; null: the master's own key.
  keyFingerprint: text("key_fingerprint"),
  generation: integer("generation").notNull().default(0),
  createdAt: integer("created_at").notNull(),
  createdBy: text("created_by"),
  publishedAt: integer("published_at"),
});

/** A repos row as read back. */
export type RepoRow = typeof repos.$inferSelect;

/**
 * The packages of each repository's current snapshot, read from each package's own metadata when it was
 * published. `meta` is what the format's metadata writer needs, so a publish never reads old packages.
 */
export const repoPackages = sqliteTable(
  "repo_packages",
  {
    repo: text("repo").notNull(),
    name: text("name").notNull(),
    arch: text("arch").notNull(),
    version: text("version").notNull(),
    source: text("source"),
    size: integer("size").notNull(),
    sha256: text("sha256").notNull(),
    // Below the repository root, e.g. pool/main/h/hello/hello_1.0-1_amd64.deb.
    path: text("path").notNull(),
    meta: text("meta", { mode: "json" }).$type<Record<string, string>>().notNull(),
    // The job whose artifact it was (null for packages published otherwise).
    jobId: integer("job_id"),
    publishedAt: integer("published_at").notNull(),
    publishedBy: text("published_by"),
  },
  (t) => [primaryKey({ columns: [t.repo, t.name, t.arch, t.version] })],
);

/** A repo_packages row as read back. */
export type RepoPackageRow = typeof repoPackages.$inferSelect;

/**
 * Who did what: one row per change a caller made (submit, cancel, token create, ...), appended after the
 * change and never updated. `token_*` name the caller as it was then, so a revoked token's deeds stay
 * readable. Read newest first by id (the primary key), which is what keeps paging cheap at any size.
 */
export const auditLog = sqliteTable(
  "audit_log",
  {
    id: integer("id").primaryKey({ autoIncrement: true }),
    at: integer("at").notNull(),
    tokenId: text("token_id").notNull(),
    tokenName: text("token_name").notNull(),
    role: text("role").notNull(),
    action: text("action").notNull(),
    target: text("target").notNull(),
    detail: text("detail", { mode: "json" }).$type<Record<string, unknown>>(),
  },
  // --since finds its first id through this; pages then walk the primary key.
  (t) => [index("audit_log_at").on(t.at)],
);

/** One audit_log row as read back. */
export type AuditRow = typeof auditLog.$inferSelect;

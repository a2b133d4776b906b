/*
 * Every error code Kiln raises or answers with, its HTTP status and what it means. A test
 * (errors.test.ts) finds every code used in src/ and fails on one missing here, and keeps docs/errors.md
 * generated from this table. Codes are stable: clients and scripts match on them, so never rename one.
 */

/** Who raises a code: the master's HTTP API, the job API inside a sandbox, the CLI, a worker, the sandbox. */
export type ErrorSource = "master" | "job API" | "CLI" | "worker" | "sandbox" | "any";

/** One registered code: the HTTP status it carries (the default when a call site gives none) and its meaning. */
export interface ErrorCode {
  status: number;
  source: ErrorSource;
  meaning: string;
}

/** The registry, keyed by code. Statuses outside HTTP answers (worker, sandbox, CLI) say what kind of failure it is. */
export const ERROR_CODES: Readonly<Record<string, ErrorCode>> = {
  // Requests the master refuses.
  BAD_REQUEST: {
    status: 400,
    source: "master",
    meaning: "The request is malformed (not JSON, not UTF-8, a bad query or header).",
  },
  INVALID_REQUEST: {
    status: 400,
    source: "any",
    meaning: "A field of the request has a value Kiln does not take.",
  },
  INVALID_JOB_ID: { status: 400, source: "master", meaning: "A job id in the path is not a number." },
  INVALID_NAME: {
    status: 400,
    source: "any",
    meaning:
      "A name (worker, template, recipe, release tag, project, channel, token...) or an artifact name breaks the name rules of src/lib/names.ts; or a release would hold a file named SHA256SUMS.",
  },
  BODY_INCOMPLETE: {
    status: 400,
    source: "master",
    meaning: "The request body ended early or could not be read.",
  },
  BODY_TOO_LARGE: {
    status: 413,
    source: "master",
    meaning: "The request body is larger than the endpoint accepts.",
  },
  // 400 like the per-field limits the schema refuses: the request is well-formed, the job is too big.
  SPEC_TOO_LARGE: {
    status: 400,
    source: "master",
    meaning: "A job's command and environment are larger than a job may have.",
  },
  TOO_LARGE: { status: 413, source: "any", meaning: "An upload or request body is larger than allowed." },
  CHECKSUM_MISMATCH: {
    status: 400,
    source: "any",
    meaning: "Bytes received do not match the sha256 sent with them.",
  },
  UNAUTHENTICATED: {
    status: 401,
    source: "any",
    meaning: "No token, or a token Kiln does not know (unknown, revoked or expired).",
  },
  JOB_CREDENTIAL_EXPIRED: {
    status: 401,
    source: "master",
    meaning:
      "A job's credential whose attempt is no longer assigned or running: it lasts exactly as long as its attempt.",
  },
  FORBIDDEN: {
    status: 403,
    source: "master",
    meaning: "The token's role or project does not allow this request.",
  },
  NOT_FOUND: { status: 404, source: "any", meaning: "No such endpoint." },
  METHOD_NOT_ALLOWED: {
    status: 405,
    source: "any",
    meaning:
      "An HTTP method the master does not serve (CONNECT, TRACE), or one a known path does not take (the Allow header lists those it does); through a job's API proxy, anything but GET or HEAD under /repos/.",
  },
  UPGRADE_REQUIRED: {
    status: 426,
    source: "master",
    meaning: "The worker endpoint was asked without a websocket upgrade.",
  },
  INTERNAL: {
    status: 500,
    source: "master",
    meaning: "An unexpected error; the master's log has the details.",
  },
  STORAGE_FULL: { status: 507, source: "master", meaning: "The master's disk is full; nothing was written." },

  // Things that do not exist.
  JOB_NOT_FOUND: {
    status: 404,
    source: "master",
    meaning: "No job with that id (or not in the caller's project).",
  },
  WORKER_NOT_FOUND: { status: 404, source: "master", meaning: "No worker of that name." },
  SLOT_NOT_FOUND: { status: 404, source: "master", meaning: "The worker has no slot of that name." },
  TOKEN_NOT_FOUND: { status: 404, source: "master", meaning: "No token with that id." },
  RECIPE_NOT_FOUND: { status: 404, source: "master", meaning: "No recipe (or recipe version) of that name." },
  TEMPLATE_NOT_FOUND: { status: 404, source: "any", meaning: "No template of that name." },
  ARTIFACT_NOT_FOUND: { status: 404, source: "master", meaning: "The job has no artifact of that name." },
  REPO_NOT_FOUND: {
    status: 404,
    source: "any",
    meaning:
      "No repository of that name that the caller (or the job's project) may read; at submit (--repo) it is a 400.",
  },
  PACKAGE_NOT_FOUND: {
    status: 404,
    source: "job API",
    meaning: "The repository holds no package of that name; `kiln job version` exits 3.",
  },

  // Conflicts with the current state.
  JOB_NOT_REBUILDABLE: {
    status: 409,
    source: "master",
    meaning: "Only a succeeded job can be rebuilt for comparison; retry a failed one instead.",
  },
  TEMPLATE_CHANGED: {
    status: 409,
    source: "master",
    meaning: "The template a job ran on has changed since, so a rebuild would not repeat its inputs.",
  },
  JOB_ACTIVE: {
    status: 409,
    source: "master",
    meaning: "The job is still queued or running; cancel it first.",
  },
  JOB_ENDED: { status: 409, source: "master", meaning: "The job has already ended." },
  JOB_NOT_ACTIVE: {
    status: 409,
    source: "master",
    meaning: "An upload for a job attempt that is not running.",
  },
  WORKER_CONNECTED: {
    status: 409,
    source: "master",
    meaning: "The worker is connected; stop it before removing it.",
  },
  WORKER_HAS_JOBS: {
    status: 409,
    source: "master",
    meaning: "The worker still holds jobs; they are re-queued when their leases run out.",
  },
  WORKER_OFFLINE: { status: 409, source: "master", meaning: "The request needs a connected worker." },
  NO_WORKERS: { status: 409, source: "master", meaning: "No connected worker can take the request." },
  TEMPLATE_IN_USE: {
    status: 409,
    source: "master",
    meaning: "Another template builds on it; remove those first.",
  },
  TEMPLATE_CYCLE: {
    status: 400,
    source: "master",
    meaning: "A template builds on itself through its bases.",
  },
  DATA_DIR_IN_USE: { status: 409, source: "master", meaning: "Another master holds the data dir's lock." },
  WORKER_NAME_IN_USE: {
    status: 409,
    source: "worker",
    meaning: "Another worker of that name runs on this host.",
  },
  ARTIFACT_EXISTS: {
    status: 409,
    source: "job API",
    meaning: "The job has already uploaded an artifact of that name.",
  },

  // Recipes.
  RECIPE_INVALID: {
    status: 400,
    source: "master",
    meaning: "A recipe file has an unknown key or a bad value.",
  },
  RECIPE_VAR_UNKNOWN: {
    status: 400,
    source: "master",
    meaning: "--var names a variable the recipe does not declare.",
  },
  RECIPE_VAR_MISSING: { status: 400, source: "master", meaning: "A required recipe variable was not given." },
  RECIPE_VAR_INVALID: {
    status: 400,
    source: "master",
    meaning: "A recipe variable's value does not match its pattern.",
  },
  RECIPE_SETUP_ROOT: {
    status: 400,
    source: "master",
    meaning: "A recipe with a setup was submitted on the host root; its setup needs a template (--root).",
  },

  // Start-up and configuration.
  USAGE: {
    status: 400,
    source: "any",
    meaning: "A command line or configuration value Kiln cannot use; the CLI exits 2.",
  },
  CONFIG_INVALID: { status: 400, source: "master", meaning: "--db is not a libSQL URL or an absolute path." },
  LISTEN_FAILED: { status: 500, source: "master", meaning: "The master could not listen on its address." },
  STORE_UNAVAILABLE: { status: 503, source: "master", meaning: "The master could not open its store." },

  // The client talking to the master or the job API.
  BAD_URL: { status: 400, source: "CLI", meaning: "--url is not an http(s) URL." },
  MASTER_UNREACHABLE: {
    status: 503,
    source: "any",
    meaning: "The CLI (or a worker asking for a job) could not connect to the master.",
  },
  API_UNREACHABLE: { status: 503, source: "CLI", meaning: "`kiln job` could not reach the job API." },
  API_ERROR: {
    status: 502,
    source: "CLI",
    meaning: "The job API refused a `kiln job` request; the message says why.",
  },

  // The job API inside a sandbox.
  ARTIFACT_BUDGET: {
    status: 413,
    source: "job API",
    meaning: "The upload would take the job past its artifact budget.",
  },
  UPLOAD_FAILED: { status: 500, source: "job API", meaning: "The worker could not store an upload." },
  TEMPLATE_FAILED: {
    status: 502,
    source: "job API",
    meaning: "A template the job asked for could not be attached.",
  },
  EGRESS_DENIED: { status: 403, source: "job API", meaning: "The job may not reach that host." },
  REPO_NOT_USED: {
    status: 404,
    source: "job API",
    meaning:
      "A request under $KILN_API/repos/NAME/ for a repository the job did not name with --use-repo (or its recipe's use_repos).",
  },
  EGRESS_DNS: { status: 502, source: "job API", meaning: "An allowed host does not resolve." },
  EGRESS_CONNECT: {
    status: 502,
    source: "job API",
    meaning: "An allowed host did not accept the connection.",
  },

  // Templates on a worker.
  TEMPLATE_BUILD_FAILED: {
    status: 500,
    source: "worker",
    meaning: "A template build failed; the message names its log.",
  },
  TEMPLATE_BUILD_OOM: {
    status: 500,
    source: "sandbox",
    meaning: "A template build ran out of memory (templates.build_memory).",
  },
  TEMPLATE_BUILD_PIDS: {
    status: 500,
    source: "sandbox",
    meaning: "A template build hit its process limit (templates.build_pids).",
  },
  TEMPLATE_BUILD_TIMEOUT: {
    status: 500,
    source: "sandbox",
    meaning: "A template build ran past templates.build_timeout.",
  },
  TEMPLATE_UNANSWERED: {
    status: 504,
    source: "worker",
    meaning: "The master did not answer a template lookup in time.",
  },
  TEMPLATE_ATTACH: {
    status: 500,
    source: "sandbox",
    meaning: "A template could not be attached to a running job.",
  },
  NO_TEMPLATE: {
    status: 404,
    source: "sandbox",
    meaning: "A job's root template no longer exists on the master.",
  },
  NO_TEMPLATE_CACHE: {
    status: 500,
    source: "worker",
    meaning: "This worker's runner cannot attach templates to a job.",
  },
  BAD_TEMPLATE: { status: 500, source: "worker", meaning: "A template's content hash is malformed." },
  ARTIFACT_FETCH: {
    status: 502,
    source: "worker",
    meaning: "A job artifact a template needs could not be fetched.",
  },
  NOT_A_JOB: {
    status: 500,
    source: "sandbox",
    meaning: "A template build asked for something only a job may do.",
  },

  // The sandbox.
  SANDBOX_NEEDS_ROOT: {
    status: 500,
    source: "sandbox",
    meaning: 'The sandbox runner needs root; use worker.runner = "process" otherwise.',
  },
  NOT_RUNNING: { status: 409, source: "sandbox", meaning: "The job's sandbox is not running." },
  UNKNOWN_GROUP: { status: 400, source: "sandbox", meaning: "A slot's group does not exist on this host." },
  SETUP_NEEDS_SANDBOX: {
    status: 400,
    source: "worker",
    meaning:
      'A job with a setup reached a worker whose runner is not the sandbox (worker.runner = "process"), which cannot run one.',
  },
  SETUP_NEEDS_TEMPLATE: {
    status: 400,
    source: "sandbox",
    meaning: "A job with a setup has no writable template root to install into.",
  },
  REPO_SOURCES_TOO_LARGE: {
    status: 400,
    source: "worker",
    meaning:
      "The sources and keys of the job's --use-repo repositories and its setup together exceed the 128 KiB one setup may hold.",
  },
  SCRATCH_TOO_BIG: {
    status: 400,
    source: "sandbox",
    meaning: "--scratch is more than this worker allows (sandbox.scratch_max).",
  },
  SCRATCH_INVALID_NAME: {
    status: 500,
    source: "sandbox",
    meaning: "A scratch volume name Kiln would not make.",
  },
  SCRATCH_INVALID_SIZE: {
    status: 400,
    source: "sandbox",
    meaning: "A scratch size that is not a positive whole number of bytes.",
  },
  SCRATCH_NO_SPACE: { status: 507, source: "sandbox", meaning: "No room for the job's scratch volume." },
  SCRATCH_NO_VOLUME_GROUP: {
    status: 500,
    source: "sandbox",
    meaning: "The configured LVM volume group does not exist.",
  },
  SCRATCH_NO_DEVICE_MAPPER: {
    status: 500,
    source: "sandbox",
    meaning: "LVM scratch needs device-mapper, which this host lacks.",
  },
  SCRATCH_FAILED: { status: 500, source: "sandbox", meaning: "Making or mounting a scratch volume failed." },
  SCRATCH_BUSY: {
    status: 500,
    source: "sandbox",
    meaning: "A scratch volume is still in use and cannot be removed.",
  },
  SCRATCH_CLEANUP: {
    status: 500,
    source: "sandbox",
    meaning: "A slot's scratch could not be removed after its job.",
  },
  SLOT_KEEPER: {
    status: 500,
    source: "sandbox",
    meaning: "A slot's keeper (its network namespace and scratch volume) could not be started.",
  },
  SCRATCH_SWEEP_FAILED: {
    status: 500,
    source: "sandbox",
    meaning: "Scratch volumes left by an earlier run could not be removed.",
  },
  CGROUP_NONE: { status: 500, source: "sandbox", meaning: "No usable cgroup hierarchy on this host." },
  CGROUP_INVALID_PATH: { status: 500, source: "sandbox", meaning: "A cgroup path Kiln would not make." },
  CGROUP_INVALID_LIMIT: {
    status: 400,
    source: "sandbox",
    meaning: "A memory, CPU or pids limit that is not a positive number.",
  },
  CGROUP_INVALID_DEVICE: {
    status: 400,
    source: "sandbox",
    meaning: "A slot device that is not a device node.",
  },
  CGROUP_LIMIT_UNSUPPORTED: {
    status: 500,
    source: "sandbox",
    meaning: "The host's cgroups cannot apply a configured limit.",
  },
  CGROUP_NOT_A_LEAF: {
    status: 500,
    source: "sandbox",
    meaning: "A job cgroup has children, so processes cannot join it.",
  },
  CGROUP_SUBTREE_BUSY: {
    status: 500,
    source: "sandbox",
    meaning: "Controllers cannot be enabled below a cgroup that holds processes.",
  },
  CGROUP_WRITE_FAILED: { status: 500, source: "sandbox", meaning: "Writing a cgroup file failed." },
  CGROUP_KILL_SELF: {
    status: 500,
    source: "sandbox",
    meaning: "Refused to kill a cgroup that holds the worker itself.",
  },
  CGROUP_KILL_TIMEOUT: {
    status: 500,
    source: "sandbox",
    meaning: "Processes of a cgroup survived being killed.",
  },
  CGROUP_REMOVE_FAILED: { status: 500, source: "sandbox", meaning: "A cgroup could not be removed." },
  CGROUP_SWEEP_FAILED: {
    status: 500,
    source: "sandbox",
    meaning: "Cgroups left by an earlier run could not be removed.",
  },
  // Artifact uploads.
  UPLOAD_OFFSET: {
    status: 409,
    source: "master",
    meaning:
      "An artifact chunk does not start where the master's copy ends; the worker asks for the offset and continues from there.",
  },
  UPLOAD_TOO_LONG: {
    status: 400,
    source: "master",
    meaning: "An artifact chunk is larger than a chunk may be, or runs past the size the worker claimed.",
  },
  ARTIFACT_MISSING: {
    status: 404,
    source: "master",
    meaning:
      "An artifact's stored content is gone from its blob store; the master's log says where it was kept.",
  },
  // Package repositories.
  BAD_PACKAGE: {
    status: 422,
    source: "master",
    meaning:
      "A package's own metadata (control data, RPM header) is missing, malformed or unsafe; the message says what.",
  },
  CREATEREPO_MISSING: {
    status: 500,
    source: "master",
    meaning:
      "RPM repository metadata needs createrepo_c: install the Debian package createrepo-c on the master.",
  },
  METADATA_FAILED: {
    status: 500,
    source: "master",
    meaning: "Writing a repository's metadata failed or left packages out; the message names the files.",
  },
  REPO_EXISTS: {
    status: 409,
    source: "master",
    meaning: "A repository with that name exists already.",
  },
  REPO_NOT_NEWER: {
    status: 409,
    source: "master",
    meaning:
      "A package is not newer than the repository's version of it (or that version is there with other content); raise its version, or publish with --force.",
  },
  REPO_WRONG_FORMAT: {
    status: 422,
    source: "master",
    meaning:
      "A file is not a package of the repository's format (an rpm into a deb repository, or no package).",
  },
  REPO_WRONG_ARCH: {
    status: 422,
    source: "master",
    meaning: "A package's architecture is not one the repository takes (kiln repo add --arch).",
  },
  REPO_NO_PACKAGES: {
    status: 422,
    source: "master",
    meaning: "`kiln repo publish` found no deb or rpm artifact (of those named) on the job.",
  },
  REPO_CHANGED: {
    status: 409,
    source: "master",
    meaning: "The repository was removed or changed by someone else during a publish; publish again.",
  },
  INVALID_PATH: {
    status: 400,
    source: "any",
    meaning:
      "A path under /repos/NAME/ (on the master, or through a job's API proxy) with an empty, '.', '..' or otherwise unsafe part.",
  },
  KEY_INVALID: {
    status: 400,
    source: "master",
    meaning:
      "A key given to `kiln repo key --import` is not one secret OpenPGP key gpg can sign with unattended.",
  },
  SIGNING_FAILED: {
    status: 500,
    source: "master",
    meaning: "gpg could not make or use a repository signing key; the message has gpg's own words.",
  },
  GPG_MISSING: {
    status: 500,
    source: "master",
    meaning: "Signing repository metadata needs gpg: install the Debian package gnupg on the master.",
  },
  DPKG_MISSING: {
    status: 500,
    source: "master",
    meaning: "Reading Debian packages needs dpkg-deb: install the Debian package dpkg on the master.",
  },
  // Releases and worker enrollment.
  RELEASE_EXISTS: {
    status: 409,
    source: "master",
    meaning: "A release with that tag exists; releases never change, so promote under a new tag.",
  },
  RELEASE_NOT_FOUND: {
    status: 404,
    source: "master",
    meaning: "No release has that tag: `kiln releases` lists them.",
  },
  RELEASE_MISSING: {
    status: 410,
    source: "master",
    meaning: "A release's files are gone from the data dir; the master's log names the path to restore.",
  },
  JOB_NOT_SUCCEEDED: {
    status: 409,
    source: "master",
    meaning: "Only a succeeded job's artifacts can become a release.",
  },
  JOIN_TOKEN_INVALID: {
    status: 400,
    source: "any",
    meaning: "A join token is not of the form `kiln1.<CA fingerprint>.<secret>`.",
  },
  JOIN_TOKEN_UNKNOWN: {
    status: 401,
    source: "master",
    meaning: "No join token has that secret: ask an admin for a new one.",
  },
  JOIN_TOKEN_REVOKED: { status: 401, source: "master", meaning: "The join token was revoked." },
  JOIN_TOKEN_USED: {
    status: 401,
    source: "master",
    meaning: "The join token was already used; each enrolls one worker.",
  },
  JOIN_TOKEN_EXPIRED: {
    status: 401,
    source: "master",
    meaning: "The join token expired before it was used.",
  },
  WORKER_ALREADY_ENROLLED: {
    status: 409,
    source: "master",
    meaning: "A worker of that name holds a live certificate: revoke it first or join under another name.",
  },
  CERTIFICATE_REVOKED: {
    status: 401,
    source: "master",
    meaning: "The worker's certificate was revoked: join again with a new token.",
  },
  CERTIFICATE_EXPIRED: {
    status: 401,
    source: "master",
    meaning: "The worker's certificate is outside its validity: it must renew before it ends, or join again.",
  },
  CERTIFICATE_UNTRUSTED: {
    status: 401,
    source: "master",
    meaning: "The certificate was not issued by this master's CA for client use.",
  },
  CERTIFICATE_UNKNOWN: {
    status: 401,
    source: "master",
    meaning: "The certificate is not in this master's records (a restored or foreign store).",
  },
  CERTIFICATE_INVALID: {
    status: 502,
    source: "worker",
    meaning: "The certificate the master issued at enrollment cannot be used.",
  },
  WORKER_CERT_MISSING: {
    status: 401,
    source: "master",
    meaning: "A request needed a worker certificate and carried none.",
  },
  WORKER_CERT_INVALID: {
    status: 401,
    source: "master",
    meaning: "The worker certificate header is malformed or too large.",
  },
  WORKER_PROOF_INVALID: {
    status: 401,
    source: "master",
    meaning: "The worker's signature over the request does not match its certificate.",
  },
  WORKER_PROOF_STALE: {
    status: 401,
    source: "master",
    meaning:
      "The worker's proof is dated more than 5 minutes from the master's clock: synchronise the clocks.",
  },
  CSR_INVALID: {
    status: 400,
    source: "master",
    meaning: "A certificate signing request is malformed, too large, or names another worker.",
  },
  TLS_FINGERPRINT_INVALID: {
    status: 400,
    source: "any",
    meaning: "A CA fingerprint is not a SHA-256 in hex.",
  },
  TLS_FINGERPRINT_MISMATCH: {
    status: 502,
    source: "worker",
    meaning:
      "The master's CA does not match the join token's fingerprint: a man in the middle, or the wrong master.",
  },
  TLS_REQUIRED: {
    status: 400,
    source: "any",
    meaning: "Enrollment needs an https:// master address, and join tokens a master that serves TLS.",
  },
  TLS_UNVERIFIED: {
    status: 502,
    source: "CLI",
    meaning:
      "The master's certificate is not one this client trusts: pass --ca, --ca-fingerprint or KILN_CA (or --insecure, unsafely).",
  },
  TLS_IDENTITY_INVALID: {
    status: 500,
    source: "worker",
    meaning: "The worker's stored key and certificate cannot be read or do not match: join again.",
  },
  TLS_NOT_ENROLLED: {
    status: 400,
    source: "worker",
    meaning: "The worker has no certificate yet: join with a token from `kiln token create --role worker`.",
  },
  TLS_CONFIG_INVALID: {
    status: 500,
    source: "master",
    meaning: "The TLS settings or files under the data dir cannot be used; the message names the file.",
  },
  TLS_KEY_INVALID: { status: 500, source: "master", meaning: "A private key file is not a usable PEM key." },
  TLS_KEY_MISMATCH: {
    status: 500,
    source: "master",
    meaning: "The configured certificate and key do not belong together.",
  },
  TLS_CERT_INVALID: {
    status: 500,
    source: "master",
    meaning: "A certificate file is not a usable PEM certificate (or not for a server).",
  },
  TLS_CERT_EXPIRED: {
    status: 500,
    source: "master",
    meaning: "The configured server certificate is not currently valid.",
  },
};

/** The status a code carries when its call site gives none: the registry's, else 400. */
export function statusOf(code: string): number {
  return ERROR_CODES[code]?.status ?? 400;
}

/** docs/errors.md as the registry says it; errors.test.ts fails when the committed file differs. */
export function renderErrorsDoc(): string {
  const rows = Object.entries(ERROR_CODES)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([code, e]) => `| \`${code}\` | ${e.status} | ${e.source} | ${e.meaning} |`);
  return `<!-- Generated from src/lib/error-codes.ts by \`KILN_WRITE_DOCS=1 bun test src/lib/errors.test.ts\`; do not edit. -->
# Error codes

Every error Kiln raises on purpose carries a stable code and a message that says what was wrong and
what to do. The master answers an HTTP request it refuses with that status and the body
\`{"error":{"code":"...","message":"..."}}\`; the CLI prints the message and exits 2 for \`USAGE\` and for
a request the master refused with 400 or 413, else 1. Scripts may match on codes: they never change
meaning. An answer without Kiln's error body (a proxy in between, say) reaches the CLI as
\`HTTP_<status>\`.

The status of a code that is not an HTTP answer (a worker's, the sandbox's) says what kind of failure it
is: 400 and 404 for something the operator or the job asked for, 5xx for the host or Kiln itself.

| code | status | raised by | meaning |
|---|---|---|---|
${rows.join("\n")}
`;
}

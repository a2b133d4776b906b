CREATE TABLE `job_events` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`job_id` integer NOT NULL,
	`attempt` integer NOT NULL,
	`at` integer NOT NULL,
	`state` text NOT NULL,
	`reason` text,
	`message` text,
	`worker` text
);
--> statement-breakpoint
CREATE INDEX `job_events_job` ON `job_events` (`job_id`,`id`);--> statement-breakpoint
CREATE TABLE `jobs` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`name` text NOT NULL,
	`project` text NOT NULL,
	`channel` text NOT NULL,
	`arch` text,
	`priority` integer DEFAULT 0 NOT NULL,
	`command` text NOT NULL,
	`env` text NOT NULL,
	`timeout_ms` integer NOT NULL,
	`memory_bytes` integer,
	`cpus` real,
	`pids` integer,
	`scratch_bytes` integer,
	`root` text DEFAULT 'host' NOT NULL,
	`needs` text NOT NULL,
	`egress` text NOT NULL,
	`repo` text,
	`retries` integer NOT NULL,
	`attempt` integer DEFAULT 1 NOT NULL,
	`state` text NOT NULL,
	`reason` text,
	`message` text,
	`exit_code` integer,
	`worker` text,
	`slot` text,
	`lease_expires_at` integer,
	`cancel_requested` integer DEFAULT false NOT NULL,
	`created_at` integer NOT NULL,
	`assigned_at` integer,
	`started_at` integer,
	`finished_at` integer,
	`peak_memory_bytes` integer,
	`cpu_ms` integer,
	`log_size` integer DEFAULT 0 NOT NULL,
	`log_base` integer DEFAULT 0 NOT NULL,
	`retry_of` integer,
	`progress` integer,
	`progress_message` text,
	`submitted_by` text
);
--> statement-breakpoint
CREATE INDEX `jobs_queue` ON `jobs` (`state`,`priority`,`id`);--> statement-breakpoint
CREATE INDEX `jobs_worker` ON `jobs` (`worker`,`state`);--> statement-breakpoint
CREATE INDEX `jobs_project` ON `jobs` (`project`,`id`);--> statement-breakpoint
CREATE TABLE `tokens` (
	`id` text PRIMARY KEY NOT NULL,
	`hash` text NOT NULL,
	`role` text NOT NULL,
	`project` text,
	`name` text NOT NULL,
	`created_at` integer NOT NULL,
	`expires_at` integer,
	`revoked_at` integer
);
--> statement-breakpoint
CREATE UNIQUE INDEX `tokens_hash_unique` ON `tokens` (`hash`);--> statement-breakpoint
CREATE TABLE `workers` (
	`name` text PRIMARY KEY NOT NULL,
	`arch` text NOT NULL,
	`channels` text NOT NULL,
	`slots` text NOT NULL,
	`version` text NOT NULL,
	`connected` integer DEFAULT false NOT NULL,
	`first_seen` integer NOT NULL,
	`last_seen` integer NOT NULL,
	`draining` integer DEFAULT false NOT NULL,
	`hold_reason` text
);

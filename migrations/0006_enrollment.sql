CREATE TABLE `join_tokens` (
	`id` text PRIMARY KEY NOT NULL,
	`secret_hash` text NOT NULL,
	`role` text NOT NULL,
	`created_at` integer NOT NULL,
	`created_by` text,
	`expires_at` integer NOT NULL,
	`used_at` integer,
	`used_by` text,
	`revoked_at` integer
);
--> statement-breakpoint
CREATE UNIQUE INDEX `join_tokens_secret_hash_unique` ON `join_tokens` (`secret_hash`);--> statement-breakpoint
CREATE TABLE `worker_certificates` (
	`serial` text PRIMARY KEY NOT NULL,
	`worker` text NOT NULL,
	`fingerprint` text NOT NULL,
	`not_before` integer NOT NULL,
	`not_after` integer NOT NULL,
	`issued_at` integer NOT NULL,
	`join_token` text,
	`renewed_from` text,
	`revoked_at` integer,
	`revoke_reason` text
);
--> statement-breakpoint
CREATE INDEX `worker_certificates_worker` ON `worker_certificates` (`worker`,`not_after`);
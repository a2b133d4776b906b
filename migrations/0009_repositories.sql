CREATE TABLE `repo_packages` (
	`repo` text NOT NULL,
	`name` text NOT NULL,
	`arch` text NOT NULL,
	`version` text NOT NULL,
	`source` text,
	`size` integer NOT NULL,
	`sha256` text NOT NULL,
	`path` text NOT NULL,
	`meta` text NOT NULL,
	`job_id` integer,
	`published_at` integer NOT NULL,
	`published_by` text,
	PRIMARY KEY(`repo`, `name`, `arch`, `version`)
);
--> statement-breakpoint
CREATE TABLE `repos` (
	`name` text PRIMARY KEY NOT NULL,
	`format` text NOT NULL,
	`project` text,
	`public` integer DEFAULT false NOT NULL,
	`dist` text,
	`component` text,
	`archs` text NOT NULL,
	`keep` integer NOT NULL,
	`key_fingerprint` text,
	`generation` integer DEFAULT 0 NOT NULL,
	`created_at` integer NOT NULL,
	`created_by` text,
	`published_at` integer
);
--> statement-breakpoint
ALTER TABLE `jobs` ADD `repo_force` integer DEFAULT false NOT NULL;
CREATE TABLE `releases` (
	`tag` text PRIMARY KEY NOT NULL,
	`job_id` integer NOT NULL,
	`artifact` text NOT NULL,
	`file` text NOT NULL,
	`size` integer NOT NULL,
	`sha256` text NOT NULL,
	`project` text NOT NULL,
	`created_at` integer NOT NULL,
	`created_by` text
);

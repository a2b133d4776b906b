CREATE TABLE `templates` (
	`name` text PRIMARY KEY NOT NULL,
	`hash` text NOT NULL,
	`recipe` text NOT NULL,
	`base` text,
	`created_at` integer NOT NULL,
	`updated_at` integer NOT NULL,
	`created_by` text
);
--> statement-breakpoint
ALTER TABLE `jobs` ADD `writable_root` integer DEFAULT false NOT NULL;
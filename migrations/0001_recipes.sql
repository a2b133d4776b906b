CREATE TABLE `recipes` (
	`name` text NOT NULL,
	`version` integer NOT NULL,
	`description` text NOT NULL,
	`source` text NOT NULL,
	`definition` text NOT NULL,
	`created_at` integer NOT NULL,
	`created_by` text,
	`deleted_at` integer,
	PRIMARY KEY(`name`, `version`)
);
--> statement-breakpoint
ALTER TABLE `jobs` ADD `recipe` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `recipe_version` integer;--> statement-breakpoint
ALTER TABLE `jobs` ADD `recipe_vars` text;
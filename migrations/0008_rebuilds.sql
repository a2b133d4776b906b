ALTER TABLE `jobs` ADD `template_hash` text;--> statement-breakpoint
ALTER TABLE `jobs` ADD `rebuild_of` integer;--> statement-breakpoint
ALTER TABLE `jobs` ADD `avoid_worker` text;--> statement-breakpoint
CREATE INDEX `jobs_rebuild_of` ON `jobs` (`rebuild_of`,`id`) WHERE "jobs"."rebuild_of" IS NOT NULL;
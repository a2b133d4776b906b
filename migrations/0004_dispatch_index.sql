DROP INDEX `jobs_queue`;--> statement-breakpoint
CREATE INDEX `jobs_ready` ON `jobs` (`channel`,`arch`,"priority" DESC,`id`) WHERE "jobs"."state" = 'queued';--> statement-breakpoint
CREATE INDEX `jobs_state` ON `jobs` (`state`,`id`);
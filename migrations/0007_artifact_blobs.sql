CREATE TABLE `artifact_blobs` (
	`sha256` text PRIMARY KEY NOT NULL,
	`size` integer NOT NULL,
	`kind` text NOT NULL,
	`store` text NOT NULL,
	`created_at` integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE `artifacts` ADD `mode` integer DEFAULT 420 NOT NULL;--> statement-breakpoint
CREATE INDEX `artifacts_sha256` ON `artifacts` (`sha256`);--> statement-breakpoint
-- Artifacts stored before blobs were tracked are all in the data dir; their kind was never read.
INSERT OR IGNORE INTO `artifact_blobs` (`sha256`, `size`, `kind`, `store`, `created_at`) SELECT `sha256`, `size`, 'other', 'fs', min(`created_at`) FROM `artifacts` GROUP BY `sha256`;

CREATE TABLE `job_counts` (
	`state` text PRIMARY KEY NOT NULL,
	`n` integer DEFAULT 0 NOT NULL
);
--> statement-breakpoint
INSERT INTO `job_counts` (`state`, `n`) SELECT `state`, count(*) FROM `jobs` GROUP BY `state`;
--> statement-breakpoint
CREATE TRIGGER `job_counts_insert` AFTER INSERT ON `jobs` BEGIN
	INSERT OR IGNORE INTO `job_counts` (`state`, `n`) VALUES (NEW.`state`, 0);
	UPDATE `job_counts` SET `n` = `n` + 1 WHERE `state` = NEW.`state`;
END;
--> statement-breakpoint
CREATE TRIGGER `job_counts_update` AFTER UPDATE OF `state` ON `jobs` WHEN OLD.`state` IS NOT NEW.`state` BEGIN
	UPDATE `job_counts` SET `n` = `n` - 1 WHERE `state` = OLD.`state`;
	INSERT OR IGNORE INTO `job_counts` (`state`, `n`) VALUES (NEW.`state`, 0);
	UPDATE `job_counts` SET `n` = `n` + 1 WHERE `state` = NEW.`state`;
END;
--> statement-breakpoint
CREATE TRIGGER `job_counts_delete` AFTER DELETE ON `jobs` BEGIN
	UPDATE `job_counts` SET `n` = `n` - 1 WHERE `state` = OLD.`state`;
END;

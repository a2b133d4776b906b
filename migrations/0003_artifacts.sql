CREATE TABLE `artifacts` (
	`job_id` integer NOT NULL,
	`name` text NOT NULL,
	`attempt` integer NOT NULL,
	`size` integer NOT NULL,
	`sha256` text NOT NULL,
	`created_at` integer NOT NULL,
	PRIMARY KEY(`job_id`, `name`)
);

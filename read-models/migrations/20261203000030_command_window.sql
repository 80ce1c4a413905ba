-- The log-order rule remembers a command id for a window (IDEMPOTENCY_WINDOW_SECONDS, a day by
-- default; decision 0008), measured on the partition's clock: the greatest Kafka record timestamp
-- of the partition's records read so far. A projection keeps that clock with its offsets and the
-- time of each command's use with the use, both written in the batch's transaction, and forgets
-- uses once the clock has passed them by more than the window.
--
-- Rows from before this migration read as used at 0 and a clock at 0: they expire as soon as the
-- clock moves. To judge a retry within a day of the upgrade exactly as the writers do, rebuild the
-- projections (`projectors rebuild <name>`) after upgrading.

ALTER TABLE projection_commands ADD COLUMN used_at_ms bigint NOT NULL DEFAULT 0;
ALTER TABLE projection_offsets ADD COLUMN clock_ms bigint NOT NULL DEFAULT 0;
-- By age alone: an index led by (projection, partition) would compete with the primary key for
-- the per-batch lookups by command id, and a plan that took it scanned a whole partition's uses
-- per lookup. Forgetting scans only the expired uses, then filters.
CREATE INDEX projection_commands_by_age ON projection_commands (used_at_ms);

-- The repeated-command part of the log-order rule (platform::log_order::extends_chain), for
-- readers that keep chain heads in their rows: which aggregate each command's accepted events
-- extended, and the version of its last one. An event whose command id already extended another
-- aggregate (a keyed retry that drew a new order id), or that repeats a command after another
-- command of the same aggregate, is an inert loser, as writers and the saga judge it. Per
-- partition, as the rule is (a writer knows its partition's commands only). Keyed like offsets by
-- '<projection>@g<generation>', written in the batch's transaction.

CREATE TABLE projection_commands (
    projection   text    NOT NULL,
    partition    integer NOT NULL,
    command_id   text    NOT NULL,
    aggregate_id text    NOT NULL,
    last_version bigint  NOT NULL,
    PRIMARY KEY (projection, partition, command_id)
);

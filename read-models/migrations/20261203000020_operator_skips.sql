-- Dead letters an operator gave up on (`projectors dlq skip`). Keyed by the projection's name,
-- not by a generation ('<projection>@g<N>'), so every generation reads them: the live one and
-- every rebuild treat a skipped record as skipped (never applied, never new poison, never an
-- anomaly), and a rebuild after a skip ends with the rows the live projection has.
--
-- A skipped record keeps its place in its aggregate's chain, so the events after it still
-- extend the chain: version, event_id and predecessor come from its envelope; when the envelope
-- could not be read, event_id and predecessor are NULL and version is the one its aggregate
-- expected next when it was skipped.

CREATE TABLE operator_skips (
    projection   text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    aggregate_id text        NOT NULL,
    version      bigint      NOT NULL,
    event_id     uuid,
    predecessor  uuid,
    reason       text        NOT NULL,
    skipped_at   timestamptz NOT NULL,
    PRIMARY KEY (projection, topic, partition, "offset")
);

CREATE INDEX operator_skips_by_aggregate ON operator_skips (projection, topic, aggregate_id);

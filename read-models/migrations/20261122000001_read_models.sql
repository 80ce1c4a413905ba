-- Read models. Each row carries its aggregate's chain head (version and last event id): the
-- projector applies the log-order rule against it, so inert events never reach a view.

CREATE TABLE customers (
    customer_id           text PRIMARY KEY,
    name                  text        NOT NULL,
    currency              text        NOT NULL,
    credit_limit_minor    bigint      NOT NULL CHECK (credit_limit_minor >= 0),
    credit_reserved_minor bigint      NOT NULL CHECK (credit_reserved_minor >= 0),
    version               bigint      NOT NULL,
    last_event_id         uuid        NOT NULL,
    updated_at            timestamptz NOT NULL
);

CREATE TABLE inventory (
    sku           text PRIMARY KEY,
    on_hand       bigint      NOT NULL CHECK (on_hand >= 0),
    reserved      bigint      NOT NULL CHECK (reserved >= 0),
    version       bigint      NOT NULL,
    last_event_id uuid        NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE orders (
    order_id         uuid PRIMARY KEY,
    customer_id      text        NOT NULL,
    status           text        NOT NULL,
    lines            jsonb       NOT NULL,
    total_minor      bigint      NOT NULL,
    currency         text        NOT NULL,
    rejection_reason text,
    rejection_detail text,
    version          bigint      NOT NULL,
    last_event_id    uuid        NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- Listing: newest first, per customer and/or status; order_id breaks ties for stable cursors.
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC, order_id DESC);
CREATE INDEX orders_by_status ON orders (status, created_at DESC, order_id DESC);
CREATE INDEX orders_by_time ON orders (created_at DESC, order_id DESC);

-- Where each projection has got to: the next offset to apply, per topic partition. Written in the
-- same transaction as the read-model change, so a crash loses nothing and applies nothing twice.
CREATE TABLE projection_offsets (
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);

-- Aggregates whose events stopped being applied: an event of theirs went to the dead-letter
-- topic, so later ones wait here (per-aggregate order) until it is redriven or skipped.
CREATE TABLE parked_aggregates (
    projection   text        NOT NULL,
    aggregate_id text        NOT NULL,
    dlq_topic    text        NOT NULL,
    reason       text        NOT NULL,
    parked_at    timestamptz NOT NULL,
    PRIMARY KEY (projection, aggregate_id)
);

CREATE TABLE parked_events (
    projection   text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    aggregate_id text        NOT NULL,
    payload      bytea,
    headers      jsonb       NOT NULL,
    parked_at    timestamptz NOT NULL,
    PRIMARY KEY (projection, topic, partition, "offset")
);

-- Events that were not applied because they do not extend their aggregate's chain: losers of a
-- writer race (expected, inert) or version gaps (a sign of trouble). Reported, never applied.
CREATE TABLE projection_anomalies (
    projection   text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    aggregate_id text        NOT NULL,
    kind         text        NOT NULL,
    detail       text        NOT NULL,
    seen_at      timestamptz NOT NULL,
    PRIMARY KEY (projection, topic, partition, "offset")
);

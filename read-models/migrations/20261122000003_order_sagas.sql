-- The saga view: one row per order saga, its steps (actions and compensations) as a JSON array
-- in the order they were first requested. Generation 1 behind a view, like every read model.

CREATE TABLE order_sagas_g1 (
    saga_id          text PRIMARY KEY,
    order_id         text        NOT NULL,
    customer_id      text        NOT NULL,
    state            text        NOT NULL,
    rejection_reason text,
    steps            jsonb       NOT NULL,
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    last_progress_at timestamptz NOT NULL,
    version          bigint      NOT NULL,
    last_event_id    uuid        NOT NULL,
    updated_at       timestamptz NOT NULL
);

CREATE VIEW order_sagas AS SELECT * FROM order_sagas_g1;

INSERT INTO projection_generations (projection, generation, switched_at)
VALUES ('order_sagas', 1, now());

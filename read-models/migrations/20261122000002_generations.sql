-- Blue/green rebuilds. Each read model lives in a generation table (customers_g1, ...) behind a
-- view with the read model's name, which is what query-api reads. A rebuild fills the next
-- generation from offset 0 while the current one keeps serving, then repoints the view and bumps
-- the generation in one transaction. Offsets, parking and anomalies are keyed by
-- '<projection>@g<generation>', so each generation has its own progress.

CREATE TABLE projection_generations (
    projection  text PRIMARY KEY,
    generation  integer     NOT NULL,
    switched_at timestamptz NOT NULL
);

INSERT INTO projection_generations (projection, generation, switched_at)
VALUES ('customers', 1, now()), ('inventory', 1, now()), ('orders', 1, now());

ALTER TABLE customers RENAME TO customers_g1;
ALTER TABLE inventory RENAME TO inventory_g1;
ALTER TABLE orders RENAME TO orders_g1;

CREATE VIEW customers AS SELECT * FROM customers_g1;
CREATE VIEW inventory AS SELECT * FROM inventory_g1;
CREATE VIEW orders AS SELECT * FROM orders_g1;

UPDATE projection_offsets SET projection = projection || '@g1';
UPDATE parked_aggregates SET projection = projection || '@g1';
UPDATE parked_events SET projection = projection || '@g1';
UPDATE projection_anomalies SET projection = projection || '@g1';

-- The key a generation's progress is stored under.
CREATE FUNCTION projection_key(name text, generation integer) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT name || '@g' || generation $$;

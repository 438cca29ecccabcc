-- Quick start: load CSV order files into a partitioned Delta Lake table, cleaning them on the way.
-- Run with: cargo run -- run examples/quickstart.sql   (no external service needed)

CREATE SOURCE IF NOT EXISTS orders (
    order_id BIGINT NOT NULL,
    customer TEXT,
    country TEXT,
    amount DOUBLE,
    currency TEXT,
    ordered_at TIMESTAMP
) WITH (connector = 'file', path = 'examples/data/orders/*.csv', format = 'csv');

-- Peek at the input without committing anything.
SELECT * FROM orders LIMIT 3;

CREATE SINK IF NOT EXISTS lake_orders WITH (
    connector = 'delta', path = 'tributary-data/lake/orders', partition_by = 'country'
);

-- Runs as a batch (files are bounded) and completes; run the script again and only new files are read.
CREATE PIPELINE IF NOT EXISTS clean_orders AS INSERT INTO lake_orders
SELECT order_id,
       initcap(customer)                                              AS customer,
       country,
       CASE WHEN currency = 'USD' THEN round(amount * 0.92, 2) ELSE amount END AS amount_eur,
       amount >= 250                                                  AS large,
       date_trunc('day', ordered_at)                                  AS order_day
FROM orders
WHERE amount > 10;

SELECT country, count(*) AS orders, round(sum(amount_eur), 2) AS revenue_eur
FROM lake_orders GROUP BY country ORDER BY country;

-- The malformed line is counted and kept, with its file and line number.
SELECT position, error FROM tributary.errors;

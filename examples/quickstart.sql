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

-- Nexmark: a built-in, deterministic generator of auction bids (1,000,000 events = 920,000 bids).
CREATE SOURCE IF NOT EXISTS bids WITH (connector = 'nexmark', table = 'bid', events = 1000000, seed = 42);

CREATE SINK IF NOT EXISTS lake_bids WITH (connector = 'delta', path = 'tributary-data/lake/bids');

-- Nexmark q1: prices converted from dollars to euros.
CREATE PIPELINE IF NOT EXISTS bids_in_euros AS INSERT INTO lake_bids
SELECT auction, bidder, round(0.908 * price) AS price_eur, channel, date_time FROM bids;

SELECT channel, count(*) AS bids, max(price_eur) AS top_price_eur
FROM lake_bids WHERE channel IN ('Google', 'Facebook', 'Baidu', 'Apple')
GROUP BY channel ORDER BY channel;

CREATE PIPELINE per_customer WITH (state_ttl = '1 hour', state_memory = '64 MB') AS INSERT INTO totals
SELECT upper(customer) AS customer, count(*) AS n, sum(amount) AS total, max(ts) AS last_order
FROM orders WHERE id <> 3 GROUP BY upper(customer)
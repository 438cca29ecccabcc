CREATE PIPELINE value_orders AS INSERT INTO log
SELECT o.id, o.currency, o.amount * r.rate AS value, r.seq
FROM orders o LEFT JOIN rates FOR SYSTEM_TIME AS OF o.ts AS r ON o.currency = r.currency
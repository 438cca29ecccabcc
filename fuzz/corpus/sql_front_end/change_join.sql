CREATE PIPELINE enrich WITH (checkpoint_interval = '1ms') AS INSERT INTO keyed
SELECT o.id, o.amount, c.name, c.region FROM orders o LEFT JOIN customers c ON o.id = c.id
CREATE PIPELINE both AS INSERT INTO keyed
SELECT id, name, balance, _op FROM customers WHERE region = 'eu'
UNION ALL SELECT id + 1000, name, balance, _op FROM customers WHERE region = 'us'
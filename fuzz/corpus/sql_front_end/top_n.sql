CREATE PIPELINE richest AS INSERT INTO keyed
SELECT region, rn, id, balance
FROM (SELECT region, id, balance, row_number() OVER (PARTITION BY region ORDER BY balance DESC, id) AS rn
      FROM customers) r
WHERE rn <= 2
SELECT o.customer, sum(o.amount) FILTER (WHERE o.amount > 10) AS big, to_char(max(o.ts), 'YYYY-MM-DD') AS day,
  CASE WHEN count(*) > 1 THEN 'many' ELSE 'one' END AS how
FROM orders o WHERE o.ts > now() - INTERVAL '7' DAY AND o.customer IN (SELECT name FROM customers)
GROUP BY o.customer HAVING count(*) >= 1 ORDER BY big DESC NULLS LAST
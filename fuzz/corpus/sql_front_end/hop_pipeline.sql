CREATE PIPELINE sliding AS INSERT INTO log
SELECT window_start, window_end, auction, count(*) AS n, max(price) AS high
FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY window_start, window_end, auction
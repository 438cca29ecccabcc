SELECT window_start, window_end, count(*) AS n, max(price) AS high
FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND)
GROUP BY window_start, window_end
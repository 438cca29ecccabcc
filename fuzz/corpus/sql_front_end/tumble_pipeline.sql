CREATE PIPELINE per_window WITH (parallelism = 2, checkpoint_interval = '500ms') AS INSERT INTO log
SELECT window_start, window_end, auction % 7 AS bucket, count(*) AS n, sum(price) AS total,
       count(DISTINCT bidder) AS bidders, count(*) FILTER (WHERE price > 10000000) AS big
FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND)
GROUP BY window_start, window_end, auction % 7
HAVING count(*) > 3
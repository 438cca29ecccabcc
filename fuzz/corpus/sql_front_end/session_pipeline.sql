CREATE PIPELINE per_bidder AS INSERT INTO log
SELECT window_start, window_end, bidder, count(*) AS n
FROM SESSION(bids, date_time, INTERVAL '300' MILLISECOND, bidder)
GROUP BY window_start, window_end, bidder
CREATE PIPELINE q3 AS INSERT INTO log
SELECT b.auction, b.price, a.seller, a.category
FROM bids b JOIN auctions a ON b.auction = a.id
  AND b.date_time BETWEEN a.date_time AND a.date_time + INTERVAL '1' HOUR
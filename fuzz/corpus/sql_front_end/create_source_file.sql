CREATE SOURCE IF NOT EXISTS clicks (click_id BIGINT NOT NULL, ad_id INT, price DECIMAL(10,2), ts TIMESTAMP(3),
  PRIMARY KEY (click_id), WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)
WITH (connector = 'file', path = '/tmp/clicks/*.csv', format = 'csv', header = 'true', delimiter = ';')
CREATE SINK lake WITH (connector = 'delta', path = '/tmp/lake', mode = 'upsert', key = 'id', partition_by = 'region');
CREATE SINK nowhere WITH (connector = 'blackhole');
CREATE SINK k WITH (connector = 'kafka', bootstrap_servers = 'localhost:9092', topic = 't', "properties.sasl.password" = SECRET kafka_pw)
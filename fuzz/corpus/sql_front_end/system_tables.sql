SELECT name, state, rows_in, rows_out FROM tributary.pipelines WHERE state = 'running';
SHOW SOURCES;
SHOW CREATE SINK keyed
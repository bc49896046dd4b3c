-- TimescaleDB only (files named *.tsdb.sql are skipped, with one log line, on plain PostgreSQL).
-- Chunks of 6 hours: on race day (50k runners, ~60k rows/s) a day-long chunk's unique index would not fit in memory.
SELECT create_hypertable('samples', by_range('time', INTERVAL '6 hours'), if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('positions', by_range('time', INTERVAL '6 hours'), if_not_exists => TRUE, migrate_data => TRUE);

-- Compress only after the late-arrival window (7 days, ingest.lateWindowMs) so ON CONFLICT never meets a
-- compressed chunk; segment by device so erasure can delete whole compressed batches.
ALTER TABLE samples SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_key, metric', timescaledb.compress_orderby = 'time DESC');
ALTER TABLE positions SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_key', timescaledb.compress_orderby = 'time DESC');
SELECT add_compression_policy('samples', compress_after => INTERVAL '8 days', if_not_exists => TRUE);
SELECT add_compression_policy('positions', compress_after => INTERVAL '8 days', if_not_exists => TRUE);

-- Raw data is kept 90 days; the rollups below outlive it.
SELECT add_retention_policy('samples', drop_after => INTERVAL '90 days', if_not_exists => TRUE);
SELECT add_retention_policy('positions', drop_after => INTERVAL '90 days', if_not_exists => TRUE);

-- Continuous aggregates for hr (1), steps (3) and distance (7): per minute, and per hour built on the minutes.
CREATE MATERIALIZED VIEW IF NOT EXISTS samples_1m WITH (timescaledb.continuous) AS
  SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, device_key, metric,
         min(value) AS min, max(value) AS max, avg(value) AS avg, sum(value) AS sum, count(*) AS n
  FROM samples WHERE metric IN (1, 3, 7)
  GROUP BY 1, 2, 3
  WITH NO DATA;
SELECT add_continuous_aggregate_policy('samples_1m', start_offset => INTERVAL '2 hours', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE);

CREATE MATERIALIZED VIEW IF NOT EXISTS samples_1h WITH (timescaledb.continuous) AS
  SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket, device_key, metric,
         min(min) AS min, max(max) AS max, sum(sum) / nullif(sum(n), 0) AS avg, sum(sum) AS sum, sum(n) AS n
  FROM samples_1m
  GROUP BY 1, 2, 3
  WITH NO DATA;
SELECT add_continuous_aggregate_policy('samples_1h', start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour', schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE);
SELECT add_retention_policy('samples_1m', drop_after => INTERVAL '400 days', if_not_exists => TRUE);

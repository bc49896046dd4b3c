-- TimescaleDB only. A hypertable's default time index (a b-tree on time DESC, made by create_hypertable in 0003) is
-- replaced by a BRIN index. Rows arrive in time order (late ones land in their own chunk), so block ranges prune a
-- time range as well — continuous-aggregate refreshes, the DP windows — while an insert no longer pays a third b-tree
-- per row: a 20,000-row INSERT into samples on the embedded store, 191 → 151 ms (bench/ingest.ts, docs/benchmarks.md).
-- Look-ups by device keep their b-trees: the identity indexes (device_key, …, time DESC).
DROP INDEX IF EXISTS samples_time_idx;
DROP INDEX IF EXISTS positions_time_idx;
CREATE INDEX IF NOT EXISTS samples_time_brin ON samples USING brin (time);
CREATE INDEX IF NOT EXISTS positions_time_brin ON positions USING brin (time);

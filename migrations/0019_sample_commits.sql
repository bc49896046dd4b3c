-- The commit log of readings (issue #16, item 5). Sync reads readings in commit order (0014); it found them through a
-- per-row index on samples (device_key, commit_seq), which every stored reading paid for: a quarter of a flush's cost
-- on the embedded store (docs/benchmarks.md). Instead every statement that stores samples writes one row here per
-- device and metric, with the time range it wrote (src/pipeline/commit-rows.ts COMMIT_LOG), and sync joins each log
-- row to its samples through the identity index (device_key, metric, time) with the same commit_seq.
-- A row here may point at no sample (all were duplicates, or retention dropped them); the join then finds nothing.
-- Upgrade every node of a cluster together: an older build stores samples without log rows, which sync cannot see.
CREATE TABLE IF NOT EXISTS sample_commits (
  device_key integer     NOT NULL,
  metric     smallint    NOT NULL,
  commit_seq bigint      NOT NULL,
  t_min      timestamptz NOT NULL,
  t_max      timestamptz NOT NULL,
  PRIMARY KEY (device_key, commit_seq, metric)
);
-- The rows stored before: one log row per device, metric and transaction (those before 0014 all have commit_seq 1).
INSERT INTO sample_commits (device_key, metric, commit_seq, t_min, t_max)
  SELECT device_key, metric, commit_seq, min(time), max(time) FROM samples GROUP BY device_key, metric, commit_seq
  ON CONFLICT DO NOTHING;
DROP INDEX IF EXISTS samples_commit_idx;

-- Commit order (issue #14). Every row an app syncs carries commit_seq: the 64-bit id of the transaction that wrote
-- (or last changed) it, pg_current_xact_id(). Transaction ids are assigned at first write, not at commit, so a reader
-- only reads below its snapshot's xmin (src/outputs/sync.ts): every transaction below it has finished, so no row can
-- appear there later and the cursor never passes a gap. Rows written before this migration read as 1 (before all).
-- ADD COLUMN with a constant default is instant (no rewrite, also on compressed hypertables); the volatile default
-- is set afterwards and applies to new rows only.
ALTER TABLE samples ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 1;
ALTER TABLE samples ALTER COLUMN commit_seq SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS samples_commit_idx ON samples (device_key, commit_seq);

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 1;
ALTER TABLE alerts ALTER COLUMN commit_seq SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS alerts_commit_idx ON alerts (user_id, commit_seq);

ALTER TABLE recommendations ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 1;
ALTER TABLE recommendations ALTER COLUMN commit_seq SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS recommendations_commit_idx ON recommendations (user_id, commit_seq);

ALTER TABLE consents ADD COLUMN IF NOT EXISTS commit_seq bigint NOT NULL DEFAULT 1;
ALTER TABLE consents ALTER COLUMN commit_seq SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX IF NOT EXISTS consents_commit_idx ON consents (user_id, commit_seq);

-- An alert resolved (or a recommendation re-delivered) moves to the end of the commit order: the app gets it again.
CREATE OR REPLACE FUNCTION pulsegate_touch_commit_seq() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.commit_seq := pg_current_xact_id()::text::bigint;
  RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS alerts_commit_seq ON alerts;
CREATE TRIGGER alerts_commit_seq BEFORE UPDATE ON alerts FOR EACH ROW EXECUTE FUNCTION pulsegate_touch_commit_seq();
DROP TRIGGER IF EXISTS recommendations_commit_seq ON recommendations;
CREATE TRIGGER recommendations_commit_seq BEFORE UPDATE ON recommendations
  FOR EACH ROW EXECUTE FUNCTION pulsegate_touch_commit_seq();

-- Distance is derived in the commit transaction from the newest committed fix of the device (src/pipeline/commit.ts):
-- the row is locked there, so two flushes of one device (two writers, two cluster nodes) derive one after the other.
CREATE TABLE IF NOT EXISTS device_tracks (
  device_key integer PRIMARY KEY,
  t          double precision,            -- epoch ms of the newest committed fix; NULL: none yet
  lat        double precision,
  lon        double precision
);
-- Tracks of devices with fixes from before this migration start at their newest stored fix.
INSERT INTO device_tracks (device_key, t, lat, lon)
  SELECT DISTINCT ON (device_key) device_key, extract(epoch FROM time) * 1000, lat, lon
  FROM positions ORDER BY device_key, time DESC
  ON CONFLICT (device_key) DO NOTHING;

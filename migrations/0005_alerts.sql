-- Health alerts: one row per episode (opened → resolved), persisted before it is published.
CREATE TABLE IF NOT EXISTS alerts (
  id          uuid PRIMARY KEY,
  user_id     text NOT NULL,
  device_id   text NOT NULL,
  event_id    text,
  kind        text NOT NULL,
  severity    text NOT NULL,
  opened_at   timestamptz NOT NULL,
  resolved_at timestamptz,
  evidence    jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alerts_user_idx ON alerts (user_id, opened_at);
-- At most one open episode per user and kind, even with two broker processes.
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_idx ON alerts (user_id, kind) WHERE resolved_at IS NULL;

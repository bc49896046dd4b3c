-- Race control's actions on alerts (issue #15 item 2, src/outputs/alert-actions.ts, docs/outputs.md "Alert actions"):
-- a medic acknowledges an alert (someone is on it) and resolves it (the case is closed). One row per action, kept
-- with the alert and erased with it (ON DELETE CASCADE: erasure deletes the runner's alerts). The actor is the
-- medic's token subject (staff id), never a name; the audit log records the same action.
CREATE TABLE IF NOT EXISTS alert_actions (
  id        bigserial PRIMARY KEY,
  alert_id  uuid NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
  action    text NOT NULL CHECK (action IN ('acknowledge', 'resolve')),
  actor_role text NOT NULL,
  actor_id  text,
  note      text CHECK (length(note) <= 500),
  at        timestamptz NOT NULL DEFAULT now()
);
-- Each action once per alert: two medics pressing acknowledge at once record one acknowledgement (the other: 409).
CREATE UNIQUE INDEX IF NOT EXISTS alert_actions_once_idx ON alert_actions (alert_id, action);
-- The console lists an event's recent alerts.
CREATE INDEX IF NOT EXISTS alerts_event_idx ON alerts (event_id, opened_at) WHERE event_id IS NOT NULL;

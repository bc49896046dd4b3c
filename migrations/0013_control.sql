-- Control plane (issue #13 item 4; src/cluster/control-plane.ts, README "Revocation"). Every write that changes who may
-- connect or what may be published about a person raises a notification on channel `pulsegate_control`, whoever wrote
-- it (a broker, the CLI against PULSEGATE_DATABASE_URL, psql): running brokers LISTEN, drop the affected cache entries
-- and cut the sessions that are no longer allowed. Triggers rather than pg_notify in the write paths, so no writer can
-- forget. A notification is sent at COMMIT (never for a rolled-back change) and carries ids only, never a reading.
-- Payload: JSON {"k": kind, "op": INSERT|UPDATE|DELETE, …}: device {d, u, key}, user {u}, consent {u, p, v, e},
-- participant {e, u}, event {e}.
CREATE OR REPLACE FUNCTION pulsegate_control_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r jsonb;
  msg jsonb;
BEGIN
  IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
  msg := CASE TG_TABLE_NAME
    WHEN 'devices' THEN jsonb_build_object('k', 'device', 'd', r->'device_id', 'u', r->'user_id', 'key', r->'device_key')
    WHEN 'revoked_certs' THEN jsonb_build_object('k', 'device', 'd', r->'device_id')
    WHEN 'users' THEN jsonb_build_object('k', 'user', 'u', r->'user_id')
    WHEN 'consents' THEN jsonb_build_object('k', 'consent', 'u', r->'user_id', 'p', r->'purpose', 'v', r->'version',
                                            'e', r->'event_id')
    WHEN 'participants' THEN jsonb_build_object('k', 'participant', 'e', r->'event_id', 'u', r->'user_id')
    WHEN 'events' THEN jsonb_build_object('k', 'event', 'e', r->'event_id')
  END;
  PERFORM pg_notify('pulsegate_control', (msg || jsonb_build_object('op', TG_OP))::text);
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS devices_control_write ON devices;
CREATE TRIGGER devices_control_write AFTER INSERT OR DELETE ON devices
  FOR EACH ROW EXECUTE FUNCTION pulsegate_control_notify();
-- Only changes that matter to a connect or an ACL check (a bulk re-registration that rewrites nothing raises nothing).
DROP TRIGGER IF EXISTS devices_control_update ON devices;
CREATE TRIGGER devices_control_update AFTER UPDATE ON devices
  FOR EACH ROW WHEN (OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint
                     OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION pulsegate_control_notify();
-- An erasure's fingerprints carry no device id: its devices' own UPDATE (revoked_at) tells the brokers.
DROP TRIGGER IF EXISTS revoked_certs_control ON revoked_certs;
CREATE TRIGGER revoked_certs_control AFTER INSERT OR UPDATE ON revoked_certs
  FOR EACH ROW WHEN (NEW.device_id IS NOT NULL) EXECUTE FUNCTION pulsegate_control_notify();
DROP TRIGGER IF EXISTS users_control ON users;
CREATE TRIGGER users_control AFTER DELETE ON users
  FOR EACH ROW EXECUTE FUNCTION pulsegate_control_notify();
-- The erasure tombstone (no user id) says nothing: the user's DELETE does.
DROP TRIGGER IF EXISTS consents_control ON consents;
CREATE TRIGGER consents_control AFTER INSERT ON consents
  FOR EACH ROW WHEN (NEW.user_id IS NOT NULL) EXECUTE FUNCTION pulsegate_control_notify();
DROP TRIGGER IF EXISTS participants_control ON participants;
CREATE TRIGGER participants_control AFTER INSERT OR UPDATE OR DELETE ON participants
  FOR EACH ROW EXECUTE FUNCTION pulsegate_control_notify();
DROP TRIGGER IF EXISTS events_control ON events;
CREATE TRIGGER events_control AFTER INSERT OR UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION pulsegate_control_notify();

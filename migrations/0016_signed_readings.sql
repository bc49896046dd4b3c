-- Readings signed (COSE_Sign1, ES256) and optionally encrypted (COSE_Encrypt0, A256GCM) by the tracker itself
-- (issue #17 items 2–3; src/pipeline/envelope.ts, docs/device-signing.md). A bridge relays them unchanged and can
-- neither forge nor (encrypted) read them.
--
-- cert_pem: the registered certificate itself (public); its key verifies the device's signatures. Set at
--   registration with the fingerprint it must match; cleared when the certificate changes without one.
-- signed_required: the device's policy: unsigned (or badly signed) batches are refused.
-- content_key: the device's A256GCM content key, wrapped under the server's device-key (src/identity/content-key.ts):
--   0x01 ‖ key id (8) ‖ nonce (12) ‖ ciphertext ‖ tag (16), bound to the device id. Null: no encryption provisioned.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS cert_pem text;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS signed_required boolean NOT NULL DEFAULT false;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS content_key bytea;

-- Brokers cache a device's verification key, policy and content key (src/identity/device-keys.ts): a change to any
-- of them must reach every broker as the certificate's own changes do (migration 0013).
DROP TRIGGER IF EXISTS devices_control_update ON devices;
CREATE TRIGGER devices_control_update AFTER UPDATE ON devices
  FOR EACH ROW WHEN (OLD.cert_fingerprint IS DISTINCT FROM NEW.cert_fingerprint
                     OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.user_id IS DISTINCT FROM NEW.user_id
                     OR OLD.cert_pem IS DISTINCT FROM NEW.cert_pem
                     OR OLD.signed_required IS DISTINCT FROM NEW.signed_required
                     OR OLD.content_key IS DISTINCT FROM NEW.content_key)
  EXECUTE FUNCTION pulsegate_control_notify();

-- Which batches were signed: one row per committed signed batch, none for unsigned ones (absence = unsigned). A row
-- per batch, not a column per sample: a batch carries tens to hundreds of samples, and unsigned traffic (the bulk
-- on race day) pays nothing. Written by the group-commit writer in the flush that carries the batch's samples.
-- A sample was delivered signed when a row of its device covers its time (first_time ≤ time ≤ last_time).
CREATE TABLE IF NOT EXISTS signed_batches (
  device_key  integer     NOT NULL,
  seq         bigint      NOT NULL,
  first_time  timestamptz NOT NULL,
  last_time   timestamptz NOT NULL,
  samples     integer     NOT NULL,
  encrypted   boolean     NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);
-- A redelivered batch (same device, seq and span) is the same row: ON CONFLICT DO NOTHING.
CREATE UNIQUE INDEX IF NOT EXISTS signed_batches_identity_idx ON signed_batches (device_key, seq, first_time);

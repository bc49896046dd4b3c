-- Privacy (issue #11 items 1–2): encrypted people, versioned consent history, per-user time zone, key fingerprints.
-- Keys never enter the database: src/ops/pseudonym.ts and src/ops/people.ts load them from the configuration or from
-- <data dir>/keys/. Only a fingerprint of each key is kept here, so a process holding another key is refused.

-- A person's IANA time zone (quiet hours, daily summaries); validated with Intl before it is written.
ALTER TABLE users ADD COLUMN IF NOT EXISTS time_zone text NOT NULL DEFAULT 'UTC'
  CHECK (time_zone <> '' AND length(time_zone) <= 64);

-- people: names and e-mails only as AES-256-GCM ciphertext (src/ops/people.ts: version byte, key id, nonce,
-- ciphertext, tag; the user id is authenticated with it). There is no key in SQL, so rows that still hold plaintext
-- cannot be encrypted here: they move to people_plaintext_legacy, which the first process holding the people key
-- encrypts back into people and drops (PeopleStore.reencryptLegacy). No pulsegate version ever wrote these columns, so
-- on every database this project created the legacy table is never made.
ALTER TABLE people ADD COLUMN IF NOT EXISTS name_enc bytea
  CHECK (name_enc IS NULL OR (octet_length(name_enc) >= 37 AND get_byte(name_enc, 0) = 1));
ALTER TABLE people ADD COLUMN IF NOT EXISTS email_enc bytea
  CHECK (email_enc IS NULL OR (octet_length(email_enc) >= 37 AND get_byte(email_enc, 0) = 1));
ALTER TABLE people ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM people WHERE display_name IS NOT NULL OR email IS NOT NULL) THEN
    CREATE TABLE people_plaintext_legacy AS
      SELECT user_id, display_name, email FROM people WHERE display_name IS NOT NULL OR email IS NOT NULL;
  END IF;
END
$$;
ALTER TABLE people DROP COLUMN IF EXISTS display_name;
ALTER TABLE people DROP COLUMN IF EXISTS email;

-- Fingerprints (not the keys) of the pseudonym and people keys this database was set up with: HMAC-SHA256(key,
-- 'pulsegate/key-id/v1'), first 8 bytes, hex. A CLI on another machine with a freshly generated key would otherwise
-- derive unlinkable user ids or write names nobody can read.
CREATE TABLE IF NOT EXISTS privacy_keys (
  purpose       text PRIMARY KEY CHECK (purpose IN ('pseudonym', 'people')),
  key_id        text NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
  registered_at timestamptz NOT NULL DEFAULT now()
);

-- consents: one row per change, versioned per user and purpose (1, 2, …), with where it came from. Event joins keep
-- recording a runner's per-event leaderboard opt-in here, scoped by event_id (their own version sequence), instead of
-- the former 'leaderboard:<event>' purposes; user-level rows have event_id NULL.
ALTER TABLE consents ADD COLUMN IF NOT EXISTS event_id text;
ALTER TABLE consents ADD COLUMN IF NOT EXISTS version integer;
UPDATE consents SET event_id = substr(purpose, 13), purpose = 'leaderboard' WHERE purpose LIKE 'leaderboard:%';
UPDATE consents SET source = CASE WHEN event_id IS NOT NULL THEN 'event-join:' || event_id ELSE 'legacy' END
  WHERE source IS NULL OR source = 'event join';
UPDATE consents c SET version = v.n
  FROM (SELECT id, row_number() OVER (PARTITION BY user_id, purpose, event_id ORDER BY at, id) AS n FROM consents) v
  WHERE c.id = v.id;
-- Erasure deletes a person's rows and leaves one tombstone without any id (eraseConsentRows in src/ops/consent.ts).
ALTER TABLE consents ALTER COLUMN user_id DROP NOT NULL;
ALTER TABLE consents ALTER COLUMN purpose DROP NOT NULL;
ALTER TABLE consents ALTER COLUMN granted DROP NOT NULL;
ALTER TABLE consents ADD CONSTRAINT consents_purpose_check
  CHECK (purpose IN ('leaderboard', 'live_sharing', 'medical_alerts', 'recommendations', 'research'));
ALTER TABLE consents ADD CONSTRAINT consents_event_scope_check CHECK (event_id IS NULL OR purpose = 'leaderboard');
ALTER TABLE consents ADD CONSTRAINT consents_source_check
  CHECK (source ~ '^(cli|rpc|erasure|legacy|app:[!-~]{1,200}|event-join:[A-Za-z0-9_-]{1,64})$');
ALTER TABLE consents ADD CONSTRAINT consents_row_check CHECK (
  (user_id IS NOT NULL AND purpose IS NOT NULL AND granted IS NOT NULL AND version >= 1 AND source <> 'erasure')
  OR (user_id IS NULL AND purpose IS NULL AND granted IS NULL AND version IS NULL AND event_id IS NULL
      AND source = 'erasure'));
-- The authority on versions: two writers that computed the same next version cannot both commit (the loser retries).
CREATE UNIQUE INDEX IF NOT EXISTS consents_user_version_idx ON consents (user_id, purpose, version)
  WHERE event_id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS consents_event_version_idx ON consents (user_id, event_id, version)
  WHERE event_id IS NOT NULL;

-- Append-only: UPDATE, DELETE and TRUNCATE are refused, except DELETE inside an erasure transaction that has set
-- `pulsegate.erasure = on` (set_config(…, true): the setting ends with the transaction). This guards against the
-- application and against mistakes, not against a database superuser, who could drop the trigger anyway.
CREATE OR REPLACE FUNCTION consents_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' AND coalesce(current_setting('pulsegate.erasure', true), '') = 'on' THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'consents is append-only: % refused', TG_OP
    USING HINT = 'record a new consent row instead; only an erasure (pulsegate.erasure = on) may delete rows';
END
$$;
CREATE TRIGGER consents_append_only BEFORE UPDATE OR DELETE ON consents
  FOR EACH ROW EXECUTE FUNCTION consents_append_only();
CREATE TRIGGER consents_no_truncate BEFORE TRUNCATE ON consents
  FOR EACH STATEMENT EXECUTE FUNCTION consents_append_only();

-- Audit log: one row per access or processing step, chained by hash (src/ops/audit-chain.ts defines the canonical
-- row; docs/privacy.md "Audit log"). Rows carry pseudonyms only, so erasure never has to rewrite the chain.
-- seq is assigned by the appender under an advisory lock; the primary key still refuses a fork if one ever raced.
CREATE TABLE IF NOT EXISTS audit_log (
  seq        bigint      PRIMARY KEY CHECK (seq > 0),
  at         timestamptz NOT NULL,
  actor_role text        NOT NULL,
  actor_id   text,                           -- pseudonymous user id, device id, or null (cli, system)
  action     text        NOT NULL,           -- dotted: sync.request, export, device.revoke, rpc.<op>, ...
  subject    text,                           -- pseudonym of the person the data is about, if any
  purpose    text,
  details    text        NOT NULL,           -- canonical JSON (sorted keys), exactly the text that was hashed
  prev_hash  bytea       NOT NULL,
  hash       bytea       NOT NULL            -- SHA-256(prev_hash || canonical row)
);
-- The GDPR export's audit extract reads one subject's rows.
CREATE INDEX IF NOT EXISTS audit_log_subject_idx ON audit_log (subject, seq) WHERE subject IS NOT NULL;

-- Signed heads of the chain. A copy of each also goes to <dataDir>/audit/checkpoints.ndjson, outside the database.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
  seq       bigint      NOT NULL,
  hash      bytea       NOT NULL,
  at        timestamptz NOT NULL,
  key_id    text        NOT NULL,            -- SHA-256 (hex) of the Ed25519 public key, SPKI DER
  signature bytea       NOT NULL,            -- Ed25519 over the checkpoint message (seq, hash, at, key_id)
  PRIMARY KEY (seq, key_id)
);

-- Append-only: UPDATE and DELETE (per row) and TRUNCATE (per statement) raise. A superuser can still disable the
-- triggers; the chain and the checkpoints outside the database are what catch that.
CREATE OR REPLACE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP USING ERRCODE = 'insufficient_privilege'; END $$;
CREATE OR REPLACE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE OR REPLACE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

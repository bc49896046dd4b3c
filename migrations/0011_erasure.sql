-- Erasure (issue #11 item 3; src/ops/erase.ts, docs/privacy.md "Erasure"). A certificate revoked by an erasure stays
-- refused forever by its fingerprint, but nothing in revoked_certs may lead back to the person afterwards: device ids
-- are chosen by operators (and may carry a name), so an erasure sets them to NULL and keeps the fingerprint only.
ALTER TABLE revoked_certs ALTER COLUMN device_id DROP NOT NULL;

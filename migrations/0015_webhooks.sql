-- Push for offline apps (src/outputs/webhook/): one row per webhook delivery, written before the first attempt so a
-- restart does not lose it. pending → delivered (kept a week for the dedupe key, then deleted) or dead (the dead
-- letters: listed by `pulsegate webhooks dead-letters`, requeued by `pulsegate webhooks retry`). Bodies carry
-- pseudonyms only; erasure deletes a user's rows (src/ops/erasure-plan.ts).
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  id              uuid PRIMARY KEY,
  -- one delivery per alert state change or recommendation id, however often it is published (redeliveries, replays)
  dedupe_key      text NOT NULL UNIQUE,
  user_id         text NOT NULL,
  kind            text NOT NULL CHECK (kind IN ('alert', 'recommendation')),
  body            text NOT NULL,
  state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  -- the node working on it, until claimed_until (then anyone may take it over)
  owner           text,
  claimed_until   timestamptz,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  finished_at     timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending_idx ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_dead_idx ON webhook_deliveries (finished_at) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS webhook_deliveries_user_idx ON webhook_deliveries (user_id);

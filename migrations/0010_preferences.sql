-- Preferences synced across a user's devices (src/insights/preferences): one last-writer-wins register per
-- (user, field), ordered by the hybrid logical clock (wall, counter, node) and then the value's canonical JSON.
-- Writers use a conditional upsert that only replaces a row with a greater stamp, so concurrent brokers converge.
-- node and value_key compare bytewise (COLLATE "C"), the order src/insights/preferences/crdt.ts uses.
CREATE TABLE IF NOT EXISTS user_preferences (
  user_id    text NOT NULL,
  field      text NOT NULL,
  value      jsonb NOT NULL,
  value_key  text COLLATE "C" NOT NULL,
  wall       bigint NOT NULL,
  counter    integer NOT NULL,
  node       text COLLATE "C" NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, field)
);

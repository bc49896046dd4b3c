-- Personalised recommendations (src/insights, issue #12 items 1–4, 6). The engine reads committed minutes (samples_1m
-- on TimescaleDB, the same SQL over samples elsewhere), keeps one row of daily features per user and local day, the
-- state of rule episodes, and every recommendation it made. All three are erased by user_id (src/ops/erasure-plan.ts).

-- Optional, opt-in: Banister TRIMP constants depend on it (Edwards is used without it). hr_max: an observed maximum
-- the user or a coach entered; otherwise Tanaka's 208 − 0.7·age.
ALTER TABLE users ADD COLUMN IF NOT EXISTS sex text CHECK (sex IS NULL OR sex IN ('female', 'male'));
ALTER TABLE users ADD COLUMN IF NOT EXISTS hr_max smallint CHECK (hr_max IS NULL OR hr_max BETWEEN 100 AND 240);

-- One row per user and local calendar day (the user's IANA zone when computed). Night fields describe 00:00–07:00 of
-- `day`; day fields the whole of `day`. A row exists for every day evaluated, with or without data, so a missing
-- night is a NULL, not an absent row.
CREATE TABLE IF NOT EXISTS daily_features (
  user_id       text NOT NULL,
  day           date NOT NULL,
  time_zone     text NOT NULL,
  rhr_night     real,                  -- mean HR of rest-qualified night minutes; NULL below the minutes gate
  rest_minutes  integer NOT NULL DEFAULT 0,
  night_minutes integer NOT NULL DEFAULT 0,  -- night minutes with a valid HR (wear)
  night_length  integer NOT NULL DEFAULT 420, -- minutes from 00:00 to 07:00 local (360/480 across a DST change)
  steps         integer NOT NULL DEFAULT 0,
  wear_minutes  integer NOT NULL DEFAULT 0,  -- day minutes with a valid HR
  day_length    integer NOT NULL DEFAULT 1440,
  moderate_min  integer NOT NULL DEFAULT 0,  -- 40–59 % HRR
  vigorous_min  integer NOT NULL DEFAULT 0,  -- ≥ 60 % HRR
  edwards       real NOT NULL DEFAULT 0,
  banister      real,                        -- only when sex is given
  load          real NOT NULL DEFAULT 0,     -- banister if present, else edwards: the daily load of the EWMA
  hr_rest_used  real,
  hr_max_used   real,
  day_complete  boolean NOT NULL DEFAULT false,
  computed_at   timestamptz NOT NULL DEFAULT now(),
  evaluated_at  timestamptz,                 -- the daily rules ran for this local day (scheduling)
  PRIMARY KEY (user_id, day)
);

-- Rule episodes with hysteresis (rhr_elevated): the id of a recommendation is derived from the episode's start, so
-- re-evaluating an open episode yields the same id.
CREATE TABLE IF NOT EXISTS insight_episodes (
  user_id       text NOT NULL,
  rule          text NOT NULL,
  started_on    date NOT NULL,
  open          boolean NOT NULL,
  normal_nights integer NOT NULL DEFAULT 0,
  last_day      date NOT NULL,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, rule)
);

CREATE TABLE IF NOT EXISTS recommendations (
  id           text PRIMARY KEY,             -- stable per user, rule and episode
  user_id      text NOT NULL,
  rule         text NOT NULL,
  version      integer NOT NULL,
  priority     text NOT NULL CHECK (priority IN ('safety', 'recovery', 'load', 'goal', 'nudge')),
  local_day    date NOT NULL,                -- the user's local day it was made for (budget, cooldowns)
  created_at   timestamptz NOT NULL,
  expires_at   timestamptz NOT NULL,
  payload      jsonb NOT NULL,
  delivered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS recommendations_user_idx ON recommendations (user_id, delivered_at);
CREATE INDEX IF NOT EXISTS recommendations_rule_idx ON recommendations (user_id, rule, local_day);

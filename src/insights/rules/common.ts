// What every daily rule's statement starts with: the users asked for, their zone (the synced preference, else
// users.time_zone) and their local "today" at the evaluation instant. $1 = user ids, $2 = the instant.
import type { Queryable } from '../../store/db.js'
import type { Candidate } from '../payload.js'

export const USER_DAY_CTE = `
u AS (
  SELECT us.user_id, us.birth_year,
         coalesce(CASE WHEN jsonb_typeof(p.value) = 'string' THEN p.value #>> '{}' END, us.time_zone) AS tz
  FROM users us LEFT JOIN user_preferences p ON p.user_id = us.user_id AND p.field = 'timeZone'
  WHERE us.user_id = ANY($1::text[])
),
t AS (
  SELECT u.user_id, u.birth_year, u.tz, ($2::timestamptz AT TIME ZONE u.tz)::date AS today,
         (((($2::timestamptz AT TIME ZONE u.tz)::date + 1)::timestamp AT TIME ZONE u.tz)) AS today_end,
         ((($2::timestamptz AT TIME ZONE u.tz)::date)::timestamp AT TIME ZONE u.tz) AS today_start
  FROM u
)`

/** Columns every daily statement returns about the user's day. */
export const USER_DAY_COLUMNS = `t.user_id, to_char(t.today, 'YYYY-MM-DD') AS today,
  (extract(epoch FROM t.today_end) * 1000)::float8 AS today_end`

export interface UserDayRow {
  user_id: string
  today: string
  today_end: number
}

/** A day counts as worn with at least this many minutes of valid HR (B5: 14 h). */
export const WEAR_GATE_MINUTES = 840

/** An episode's stored state (insight_episodes), written back by the engine after the rules ran. */
export interface EpisodeWrite {
  userId: string
  rule: string
  startedOn: string
  open: boolean
  normalNights: number
  lastDay: string
}

export interface RuleResult {
  candidates: Candidate[]
  episodes: EpisodeWrite[]
}

export interface DailyRuleInput {
  db: Queryable
  userIds: readonly string[]
  at: Date
}

export const num = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v))

export async function writeEpisodes(db: Queryable, writes: readonly EpisodeWrite[]): Promise<void> {
  if (writes.length === 0) return
  await db.query(
    `INSERT INTO insight_episodes (user_id, rule, started_on, open, normal_nights, last_day, updated_at)
     SELECT * , now() FROM unnest($1::text[], $2::text[], $3::date[], $4::bool[], $5::int[], $6::date[])
     ON CONFLICT (user_id, rule) DO UPDATE SET started_on = EXCLUDED.started_on, open = EXCLUDED.open,
       normal_nights = EXCLUDED.normal_nights, last_day = EXCLUDED.last_day, updated_at = now()`,
    [
      writes.map((w) => w.userId),
      writes.map((w) => w.rule),
      writes.map((w) => w.startedOn),
      writes.map((w) => w.open),
      writes.map((w) => w.normalNights),
      writes.map((w) => w.lastDay),
    ],
  )
}

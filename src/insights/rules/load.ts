// Load rules from the daily load L (Banister TRIMP when sex is given, else Edwards), one statement for both.
// load_jump (R3): acute:chronic EWMA (λ = 2/(N+1), N = 7 and 28; Williams 2017) ≥ 1.5 on yesterday and the day before;
// only with ≥ 28 days of history (21 of the last 28 worn), chronic above a floor (the user's 20th percentile of days
// with load), and never in the 14 days before an event the user is in nor the 5 days after one (taper, race week).
// The EWMA is normalised by its weights over the days since the first one with data, so a short history is not read
// as low chronic load. recovery_day (R6 + R9): after a race yesterday, or after a very high load day (≥ 2 × chronic)
// when last night's resting HR is ≥ 2 bpm above baseline too: suggest an easy day.
import type { Candidate } from '../payload.js'
import { round1 } from '../payload.js'
import {
  type DailyRuleInput,
  num,
  type RuleResult,
  USER_DAY_COLUMNS,
  USER_DAY_CTE,
  type UserDayRow,
  WEAR_GATE_MINUTES,
} from './common.js'

export const LOAD_VERSION = 1
export const RECOVERY_VERSION = 1
const ACUTE = 1 - 2 / 8
const CHRONIC = 1 - 2 / 29

const SQL = `WITH ${USER_DAY_CTE},
h AS (
  SELECT t.user_id, min(f.day) AS first_day,
         count(*) FILTER (WHERE f.day >= t.today - 28 AND f.wear_minutes >= ${WEAR_GATE_MINUTES})::int AS covered28,
         percentile_cont(0.2) WITHIN GROUP (ORDER BY f.load) FILTER (WHERE f.load > 0 AND f.day >= t.today - 28) AS floor
  FROM t JOIN daily_features f ON f.user_id = t.user_id AND f.day BETWEEN t.today - 90 AND t.today - 1
   AND (f.wear_minutes > 0 OR f.load > 0)
  GROUP BY t.user_id
),
s AS (
  SELECT t.user_id, g.d::date AS day, coalesce(f.load, 0)::float8 AS load
  FROM t JOIN h ON h.user_id = t.user_id
  CROSS JOIN LATERAL generate_series(greatest(h.first_day, t.today - 90)::timestamp, (t.today - 1)::timestamp, interval '1 day') g(d)
  LEFT JOIN daily_features f ON f.user_id = t.user_id AND f.day = g.d::date
),
e AS (
  SELECT s.user_id, k.k,
         sum(s.load * power(${ACUTE}, (t.today - k.k) - s.day)) / sum(power(${ACUTE}, (t.today - k.k) - s.day)) AS acute,
         sum(s.load * power(${CHRONIC}, (t.today - k.k) - s.day)) / sum(power(${CHRONIC}, (t.today - k.k) - s.day)) AS chronic
  FROM s JOIN t ON t.user_id = s.user_id CROSS JOIN (VALUES (1), (2)) k(k)
  WHERE s.day <= t.today - k.k
  GROUP BY s.user_id, k.k
),
rb AS (
  SELECT t.user_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY b.rhr_night) AS rhr_base, count(*)::int AS rhr_nights
  FROM t CROSS JOIN LATERAL (SELECT f.rhr_night FROM daily_features f WHERE f.user_id = t.user_id
    AND f.rhr_night IS NOT NULL AND f.day < t.today AND f.day >= t.today - 120 ORDER BY f.day DESC LIMIT 28) b
  GROUP BY t.user_id
),
ev AS (
  SELECT t.user_id,
    bool_or(x.starts_at >= t.today_start - interval '1 day' AND x.starts_at < t.today_start) AS race_yesterday,
    bool_or(x.starts_at >= t.today_start AND x.starts_at < t.today_start + interval '14 days') AS taper,
    bool_or(x.starts_at >= t.today_start - interval '5 days' AND x.starts_at < t.today_start) AS post_race
  FROM t JOIN participants p ON p.user_id = t.user_id JOIN events x ON x.event_id = p.event_id
  WHERE x.starts_at IS NOT NULL
  GROUP BY t.user_id
)
SELECT ${USER_DAY_COLUMNS}, (t.today - h.first_day)::int AS history_days, h.covered28, h.floor,
       e1.acute AS acute1, e1.chronic AS chronic1, e2.acute AS acute2, e2.chronic AS chronic2,
       f1.load AS load1, f0.rhr_night AS rhr0, rb.rhr_base, rb.rhr_nights,
       coalesce(ev.race_yesterday, false) AS race_yesterday, coalesce(ev.taper, false) AS taper,
       coalesce(ev.post_race, false) AS post_race
FROM t LEFT JOIN h ON h.user_id = t.user_id
LEFT JOIN e e1 ON e1.user_id = t.user_id AND e1.k = 1 LEFT JOIN e e2 ON e2.user_id = t.user_id AND e2.k = 2
LEFT JOIN daily_features f1 ON f1.user_id = t.user_id AND f1.day = t.today - 1
LEFT JOIN daily_features f0 ON f0.user_id = t.user_id AND f0.day = t.today
LEFT JOIN rb ON rb.user_id = t.user_id LEFT JOIN ev ON ev.user_id = t.user_id`

export interface LoadInput {
  userId: string
  today: string
  todayEnd: number
  historyDays: number
  covered28: number
  floor: number | null
  acute1: number | null
  chronic1: number | null
  acute2: number | null
  chronic2: number | null
  load1: number | null
  rhr0: number | null
  rhrBase: number | null
  rhrNights: number
  raceYesterday: boolean
  taper: boolean
  postRace: boolean
}

/** Chronic load at or above the floor; the floor is a percentile of the same loads, so equal up to rounding counts. */
const aboveFloor = (chronic: number, floor: number | null): boolean =>
  chronic > 0 && chronic >= (floor ?? 0) * (1 - 1e-9)

export const MIN_LOAD_HISTORY_DAYS = 28
export const MIN_LOAD_COVERED_DAYS = 21

export function decideLoadJump(i: LoadInput, at: number): Candidate | null {
  if (i.historyDays < MIN_LOAD_HISTORY_DAYS || i.covered28 < MIN_LOAD_COVERED_DAYS) return null
  if (i.taper || i.postRace || i.raceYesterday) return null
  if (i.acute1 === null || i.chronic1 === null || i.acute2 === null || i.chronic2 === null) return null
  if (!aboveFloor(i.chronic1, i.floor) || !aboveFloor(i.chronic2, i.floor)) return null
  const r1 = i.acute1 / i.chronic1
  const r2 = i.acute2 / i.chronic2
  if (r1 < 1.5 || r2 < 1.5) return null
  return {
    userId: i.userId,
    rule: 'load_jump',
    version: LOAD_VERSION,
    priority: 'load',
    episode: i.today,
    title: 'Your training load jumped',
    message:
      `Your training load this week is about ${round1(r1)}× your 4-week average. Big jumps are linked with more ` +
      'aches and injuries in athletes. Consider keeping the next few sessions easy or similar rather than harder.',
    evidence: {
      metric: 'acwr_ewma',
      value: Math.round(r1 * 100) / 100,
      baseline: round1(i.chronic1),
      window: '7-day vs 28-day EWMA',
      threshold: '≥ 1.5 on 2 days',
      coverage: Math.round((i.covered28 / 28) * 100) / 100,
    },
    createdAt: at,
    expiresAt: Math.max(i.todayEnd, at + 3600_000),
    localDay: i.today,
  }
}

export function decideRecovery(i: LoadInput, at: number): Candidate | null {
  const rhrUp = i.rhr0 !== null && i.rhrBase !== null && i.rhrNights >= 7 ? i.rhr0 - i.rhrBase : null
  const highLoad =
    i.historyDays >= 14 &&
    i.load1 !== null &&
    i.chronic2 !== null &&
    aboveFloor(i.chronic2, i.floor) &&
    i.load1 >= 2 * i.chronic2
  // Load and RHR together: a hard day alone is what training is; with the resting HR up it asks for an easy day.
  if (!i.raceYesterday && !(highLoad && rhrUp !== null && rhrUp >= 2)) return null
  const missing =
    rhrUp === null ? 'no resting heart rate last night (too few rest minutes or too few nights)' : undefined
  const rhrText =
    rhrUp !== null && rhrUp >= 2
      ? ` Your resting heart rate last night was ${Math.round(rhrUp)} bpm above your usual.`
      : ''
  return {
    userId: i.userId,
    rule: 'recovery_day',
    version: RECOVERY_VERSION,
    priority: 'recovery',
    episode: i.today,
    title: 'An easy day today',
    message:
      (i.raceYesterday
        ? 'Well done on your race yesterday.'
        : `Yesterday's load was about ${round1((i.load1 ?? 0) / (i.chronic2 ?? 1))}× your recent daily average.`) +
      `${rhrText} An easy day — a walk, gentle movement, extra sleep — helps your body absorb the effort.` +
      (missing ? ' (No resting heart rate was available for last night.)' : ''),
    evidence: {
      metric: i.raceYesterday ? 'race' : 'load_daily',
      value: i.load1 === null ? null : round1(i.load1),
      baseline: i.chronic2 === null ? null : round1(i.chronic2),
      window: '28-day EWMA; RHR vs 28 nights',
      threshold: i.raceYesterday ? 'race yesterday' : '≥ 2 × chronic load and RHR ≥ +2 bpm',
      coverage: Math.round((i.covered28 / 28) * 100) / 100,
      ...(missing ? { missing } : {}),
    },
    createdAt: at,
    expiresAt: Math.max(i.todayEnd, at + 3600_000),
    localDay: i.today,
  }
}

function parse(r: Record<string, unknown>): LoadInput {
  const row = r as unknown as UserDayRow
  return {
    userId: row.user_id,
    today: row.today,
    todayEnd: Number(row.today_end),
    historyDays: num(r['history_days']) ?? 0,
    covered28: num(r['covered28']) ?? 0,
    floor: num(r['floor']),
    acute1: num(r['acute1']),
    chronic1: num(r['chronic1']),
    acute2: num(r['acute2']),
    chronic2: num(r['chronic2']),
    load1: num(r['load1']),
    rhr0: num(r['rhr0']),
    rhrBase: num(r['rhr_base']),
    rhrNights: num(r['rhr_nights']) ?? 0,
    raceYesterday: Boolean(r['race_yesterday']),
    taper: Boolean(r['taper']),
    postRace: Boolean(r['post_race']),
  }
}

export async function evaluateLoad(
  input: DailyRuleInput,
  which: { loadJump: boolean; recovery: boolean },
): Promise<RuleResult> {
  const rows = await input.db.query(SQL, [input.userIds, input.at.toISOString()])
  const candidates: Candidate[] = []
  for (const r of rows.rows) {
    const i = parse(r)
    if (which.loadJump) {
      const c = decideLoadJump(i, input.at.getTime())
      if (c) candidates.push(c)
    }
    if (which.recovery) {
      const c = decideRecovery(i, input.at.getTime())
      if (c) candidates.push(c)
    }
  }
  return { candidates, episodes: [] }
}

// move_reminder (R10): at :50 or later in a local hour inside the active window (its first hour skipped), when the hour
// has < 250 steps and the last 50 minutes were still (no steps) while the tracker was worn (HR in ≥ 40 of them), and
// the recent heart rate is not that of a workout (< 40 % HRR). ≤ 1 per hour (the id is the hour), expires at :59.
// Reads committed raw samples of the last hour (the same SQL on both stores: an hour per user is a short index range,
// and the continuous aggregate may not have materialised it yet).
import { hhmm, inWindow, localInstant, localParts, safeZone } from '../local-time.js'
import type { Candidate } from '../payload.js'
import { type DailyRuleInput, num, type RuleResult } from './common.js'

export const MOVE_VERSION = 1

const SQL = `
WITH u AS (
  SELECT us.user_id, us.birth_year,
         coalesce(CASE WHEN jsonb_typeof(p.value) = 'string' THEN p.value #>> '{}' END, us.time_zone) AS tz,
         (SELECT f.hr_rest_used FROM daily_features f WHERE f.user_id = us.user_id AND f.hr_rest_used IS NOT NULL
          ORDER BY f.day DESC LIMIT 1) AS hr_rest,
         coalesce(us.hr_max, 208 - 0.7 * coalesce(extract(year FROM $2::timestamptz) - us.birth_year, 40)) AS hr_max
  FROM users us LEFT JOIN user_preferences p ON p.user_id = us.user_id AND p.field = 'timeZone'
  WHERE us.user_id = ANY($1::text[])
),
m AS (
  SELECT dv.user_id, date_trunc('minute', s.time) AS bucket,
         coalesce(sum(s.value) FILTER (WHERE s.metric = 3), 0) AS steps,
         count(*) FILTER (WHERE s.metric = 1) AS hr_n, avg(s.value) FILTER (WHERE s.metric = 1) AS hr
  FROM samples s JOIN devices dv ON dv.device_key = s.device_key
  WHERE dv.user_id = ANY($1::text[]) AND s.metric IN (1, 3)
    AND s.time >= $2::timestamptz - interval '60 minutes' AND s.time < $2::timestamptz
  GROUP BY 1, 2
)
SELECT u.user_id, u.tz, u.hr_rest, u.hr_max,
       coalesce(sum(m.steps) FILTER (WHERE m.bucket >= date_trunc('hour', $2::timestamptz AT TIME ZONE u.tz) AT TIME ZONE u.tz), 0)::float8 AS steps_hour,
       coalesce(sum(m.steps) FILTER (WHERE m.bucket >= $2::timestamptz - interval '50 minutes'), 0)::float8 AS steps50,
       count(*) FILTER (WHERE m.hr_n > 0 AND m.bucket >= $2::timestamptz - interval '50 minutes')::int AS worn50,
       avg(m.hr) FILTER (WHERE m.bucket >= $2::timestamptz - interval '10 minutes') AS hr10
FROM u LEFT JOIN m ON m.user_id = u.user_id
GROUP BY u.user_id, u.tz, u.hr_rest, u.hr_max`

export interface MoveInput {
  userId: string
  tz: string
  stepsHour: number
  steps50: number
  worn50: number
  hr10: number | null
  hrRest: number | null
  hrMax: number
}

export interface ActiveHours {
  activeStart: string
  activeEnd: string
}

export function decideMove(i: MoveInput, at: number, hours: ActiveHours): Candidate | null {
  const tz = safeZone(i.tz)
  const lp = localParts(at, tz)
  if (lp.minute < 50) return null
  // The window's first hour is skipped: nobody has been still "for 50 minutes" at 09:50 because the day began.
  const start = hhmm(hours.activeStart) + 60
  if (!inWindow(lp.hour * 60 + lp.minute, start, hhmm(hours.activeEnd))) return null
  if (i.stepsHour >= 250 || i.steps50 > 0 || i.worn50 < 40) return null
  const rest = i.hrRest ?? 60
  if (i.hr10 !== null && (i.hr10 - rest) / Math.max(1, i.hrMax - rest) >= 0.4) return null
  const hourStart = localInstant(lp.date, lp.hour * 60, tz)
  return {
    userId: i.userId,
    rule: 'move_reminder',
    version: MOVE_VERSION,
    priority: 'nudge',
    episode: `${lp.date}T${String(lp.hour).padStart(2, '0')}`,
    title: 'Time to move',
    message: "You've been still for about 50 minutes — a 2–3 minute walk (≈250 steps) breaks it up.",
    evidence: {
      metric: 'steps_hour',
      value: i.stepsHour,
      baseline: null,
      window: 'this hour; still for the last 50 min',
      threshold: '< 250 steps and ≥ 50 still minutes',
      coverage: Math.round((i.worn50 / 50) * 100) / 100,
    },
    createdAt: at,
    expiresAt: hourStart + 59 * 60_000,
    localDay: lp.date,
  }
}

export async function evaluateMove(input: DailyRuleInput, hours: ActiveHours): Promise<RuleResult> {
  const rows = await input.db.query(SQL, [input.userIds, input.at.toISOString()])
  const candidates: Candidate[] = []
  for (const r of rows.rows) {
    const c = decideMove(
      {
        userId: String(r['user_id']),
        tz: String(r['tz']),
        stepsHour: Number(r['steps_hour']),
        steps50: Number(r['steps50']),
        worn50: Number(r['worn50']),
        hr10: num(r['hr10']),
        hrRest: num(r['hr_rest']),
        hrMax: Number(r['hr_max']),
      },
      input.at.getTime(),
      hours,
    )
    if (c) candidates.push(c)
  }
  return { candidates, episodes: [] }
}

// Synthetic wellness history for the recommendation tests: per-minute HR and steps written straight into `samples`
// (one HR sample per minute: the tests run with insights.minSamplesPerMinute = 1), laid out in the user's local time
// so nights, days and time-zone boundaries are exactly where a test puts them.
import type { Queryable } from '../../src/store/db.js'

export interface DayPlan {
  /** local date YYYY-MM-DD */
  date: string
  /** HR over 00:00–07:00 local, no steps (rest-qualified after 12 minutes); null: no samples that night */
  nightHr: number | null
  /** night samples start at this local minute (default 0): later starts give fewer rest minutes */
  nightFrom?: number
  /** total steps over the day (07:00–22:00 local, spread over every 10th minute); 0 = none */
  steps: number
  /** HR during the day outside the zone minutes (default 75) */
  dayHr?: number
  /** worn during the day (07:00–24:00); false = no day samples (a coverage gap) */
  worn?: boolean
  /** minutes at this HR from 18:00 local (a workout) */
  workout?: { minutes: number; hr: number }
}

interface Segment {
  date: string
  from: number
  to: number
  metric: number
  value: number
  every: number
}

function segments(d: DayPlan): Segment[] {
  const out: Segment[] = []
  if (d.nightHr !== null)
    out.push({ date: d.date, from: d.nightFrom ?? 0, to: 420, metric: 1, value: d.nightHr, every: 1 })
  if (d.worn !== false) {
    const w = d.workout
    const dayHr = d.dayHr ?? 75
    if (w && w.minutes > 0) {
      out.push({ date: d.date, from: 420, to: 1080, metric: 1, value: dayHr, every: 1 })
      out.push({ date: d.date, from: 1080, to: 1080 + w.minutes, metric: 1, value: w.hr, every: 1 })
      out.push({ date: d.date, from: 1080 + w.minutes, to: 1440, metric: 1, value: 65, every: 1 })
    } else {
      out.push({ date: d.date, from: 420, to: 1320, metric: 1, value: dayHr, every: 1 })
      out.push({ date: d.date, from: 1320, to: 1440, metric: 1, value: 65, every: 1 })
    }
    // 90 step samples, one every 10 minutes from 07:05 to 21:55
    if (d.steps > 0) out.push({ date: d.date, from: 425, to: 1320, metric: 3, value: d.steps / 90, every: 10 })
  }
  return out
}

/**
 * Writes the days for one device in one statement. Minutes are local wall times converted with the zone's rules, so
 * a DST day simply has fewer (or repeated) instants; a local minute that does not exist maps to the next one.
 */
export async function writeDays(db: Queryable, deviceKey: number, tz: string, days: readonly DayPlan[]): Promise<void> {
  const segs = days.flatMap(segments)
  if (segs.length === 0) return
  await db.query(
    `INSERT INTO samples (time, device_key, metric, value)
     SELECT DISTINCT ON (ts, s.metric) ts, $1::int, s.metric, s.value FROM (
       SELECT ((s.date::date + make_interval(mins => m)) AT TIME ZONE $2::text) AS ts, s.metric, s.value
       FROM unnest($3::text[], $4::int[], $5::int[], $6::int[], $7::float8[], $8::int[])
            AS s(date, from_min, to_min, metric, value, every)
       CROSS JOIN LATERAL generate_series(s.from_min, s.to_min - 1, s.every) AS m
     ) s ORDER BY ts, s.metric
     ON CONFLICT DO NOTHING`,
    [
      deviceKey,
      tz,
      segs.map((s) => s.date),
      segs.map((s) => s.from),
      segs.map((s) => s.to),
      segs.map((s) => s.metric),
      segs.map((s) => s.value),
      segs.map((s) => s.every),
    ],
  )
}

/** A user (with a zone, birth year, sex) and one device; returns the device key. */
export async function seedUser(
  db: Queryable,
  userId: string,
  opts: { tz?: string; birthYear?: number; sex?: 'female' | 'male' } = {},
): Promise<number> {
  await db.query(
    `INSERT INTO users (user_id, birth_year, time_zone, sex) VALUES ($1, $2, $3, $4)
     ON CONFLICT (user_id) DO UPDATE SET birth_year = EXCLUDED.birth_year, time_zone = EXCLUDED.time_zone, sex = EXCLUDED.sex`,
    [userId, opts.birthYear ?? 1990, opts.tz ?? 'UTC', opts.sex ?? null],
  )
  const res = await db.query<{ device_key: number }>(
    `INSERT INTO devices (device_id, user_id) VALUES ($1, $2)
     ON CONFLICT (device_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING device_key`,
    [`trk-${userId}`, userId],
  )
  return Number(res.rows[0]?.device_key)
}

/** The recommendations consent, as an app would grant it (versioned history row). */
export async function grantRecommendations(db: Queryable, userId: string, granted = true): Promise<void> {
  await db.query(
    `INSERT INTO consents (user_id, purpose, granted, source, version)
     SELECT $1, 'recommendations', $2, 'cli', coalesce(max(version), 0) + 1 FROM consents
     WHERE user_id = $1 AND purpose = 'recommendations' AND event_id IS NULL`,
    [userId, granted],
  )
}

/** Local dates from `last` back `n` days (oldest first). */
export function datesBack(last: string, n: number): string[] {
  const [y, m, d] = last.split('-').map(Number) as [number, number, number]
  const out: string[] = []
  for (let i = n - 1; i >= 0; i--) out.push(new Date(Date.UTC(y, m - 1, d - i)).toISOString().slice(0, 10))
  return out
}

// Daily features per user (docs/insights.md, "Recommendations"), computed set-wise: two statements for every user
// due, whatever their number, never a loop over users. The minutes come from the samples_1m continuous aggregate on
// TimescaleDB and from the same aggregation over `samples` on plain PostgreSQL; everything after that is one SQL.
//
// Local days: a minute belongs to the local date of its bucket in the user's IANA zone (`bucket AT TIME ZONE tz`), so
// DST days are 23 or 25 hours long and the night 00:00–07:00 is 6 or 8 hours long on the change days.
import type { Db } from '../store/db.js'

export interface FeatureSettings {
  /** a 1-min HR row is valid with at least this many samples (B5: 30 at 1 Hz) */
  minSamplesPerMinute: number
  /** a night has a resting HR only with this many rest-qualified minutes (B3: 120) */
  minRestMinutes: number
  /** days recomputed for a user who already has features (late uploads land in them) */
  lookbackDays: number
  /** days computed the first time a user is evaluated */
  historyDays: number
}

export const DEFAULT_FEATURE_SETTINGS: FeatureSettings = {
  minSamplesPerMinute: 30,
  minRestMinutes: 120,
  lookbackDays: 2,
  historyDays: 35,
}

const DAY_MS = 86_400_000

/**
 * The per-user local-day list and the per-user minutes. Parameters: $1 user ids, $2 `at`, $3 lookback, $4 history
 * days, $5 min samples per minute, $6/$7 the minutes' time range, $8/$9 the days to compute back from today per user (decided once for both statements).
 */
function prefix(timescale: boolean, fromTemp: boolean): string {
  // samples_1m has the same columns as this GROUP BY (bucket, device_key, metric, sum, n); only the source differs.
  const minutes = timescale
    ? `SELECT bucket, device_key, metric, sum, n FROM samples_1m
       WHERE metric IN (1, 3) AND bucket >= $6::timestamptz AND bucket < $7::timestamptz
         AND device_key IN (SELECT device_key FROM devices WHERE user_id = ANY($1::text[]))`
    : `SELECT date_trunc('minute', time) AS bucket, device_key, metric, sum(value) AS sum, count(*) AS n FROM samples
       WHERE metric IN (1, 3) AND time >= $6::timestamptz AND time < $7::timestamptz
         AND device_key IN (SELECT device_key FROM devices WHERE user_id = ANY($1::text[]))
       GROUP BY 1, 2, 3`
  return `
WITH u AS (
  SELECT us.user_id, us.birth_year, us.sex, us.hr_max, us.resting_hr,
         coalesce(CASE WHEN jsonb_typeof(p.value) = 'string' THEN p.value #>> '{}' END, us.time_zone) AS tz,
         b.back, $3::int AS lookback, $4::int AS history, $5::int AS min_samples, $6::timestamptz AS m_from,
         $7::timestamptz AS m_to
  FROM users us LEFT JOIN user_preferences p ON p.user_id = us.user_id AND p.field = 'timeZone'
  JOIN unnest($8::text[], $9::int[]) AS b(user_id, back) ON b.user_id = us.user_id
  WHERE us.user_id = ANY($1::text[])
),
d AS (
  SELECT u.user_id, u.tz, g.day::date AS day,
         (g.day AT TIME ZONE u.tz) AS day_start,
         ((g.day + interval '1 day') AT TIME ZONE u.tz) AS day_end,
         ((g.day + interval '7 hours') AT TIME ZONE u.tz) AS night_end
  FROM u, LATERAL generate_series(((($2::timestamptz AT TIME ZONE u.tz)::date - u.back))::timestamp,
                                  (($2::timestamptz AT TIME ZONE u.tz)::date)::timestamp, interval '1 day') AS g(day)
),
${fromTemp ? 'vm AS (SELECT * FROM insight_minutes)' : MINUTES(minutes)}`
}

/** The per-user minutes: all devices of a user summed per minute, with validity and the rest-qualifying window. */
const MINUTES = (minutes: string) => `mins AS (${minutes}),
um AS (
  SELECT dv.user_id, m.bucket, (m.bucket AT TIME ZONE u.tz)::date AS day,
         (m.bucket AT TIME ZONE u.tz)::time < time '07:00' AS night,
         sum(m.sum) FILTER (WHERE m.metric = 1) / nullif(sum(m.n) FILTER (WHERE m.metric = 1), 0) AS hr,
         coalesce(sum(m.n) FILTER (WHERE m.metric = 1), 0) AS hr_n,
         coalesce(sum(m.sum) FILTER (WHERE m.metric = 3), 0) AS steps
  FROM mins m JOIN devices dv ON dv.device_key = m.device_key JOIN u ON u.user_id = dv.user_id
  GROUP BY dv.user_id, m.bucket, u.tz
),
vm AS (
  SELECT um.*, um.hr_n >= $5::int AND um.hr BETWEEN 30 AND 220 AS valid,
         -- B3 (a): rest-qualified = no steps in this minute and the 11 before it
         sum(um.steps) OVER (PARTITION BY um.user_id ORDER BY um.bucket
                             RANGE BETWEEN interval '11 minutes' PRECEDING AND CURRENT ROW) AS steps12
  FROM um
)`

/** Statement 1: nights (resting HR), steps, wear; one row per user and local day, data or not. $10 = min rest minutes. */
function nightsAndSteps(timescale: boolean): string {
  return `${prefix(timescale, true)},
agg AS (
  SELECT vm.user_id, vm.day,
         avg(vm.hr) FILTER (WHERE vm.valid AND vm.night AND vm.steps12 = 0) AS rest_hr,
         count(*) FILTER (WHERE vm.valid AND vm.night AND vm.steps12 = 0)::int AS rest_minutes,
         count(*) FILTER (WHERE vm.valid AND vm.night)::int AS night_minutes,
         count(*) FILTER (WHERE vm.valid)::int AS wear_minutes,
         coalesce(sum(vm.steps), 0) AS steps
  FROM vm GROUP BY vm.user_id, vm.day
)
INSERT INTO daily_features AS f (user_id, day, time_zone, rhr_night, rest_minutes, night_minutes, night_length, steps,
                                 wear_minutes, day_length, day_complete, computed_at)
SELECT d.user_id, d.day, d.tz,
       CASE WHEN coalesce(a.rest_minutes, 0) >= $10::int THEN a.rest_hr END,
       coalesce(a.rest_minutes, 0), coalesce(a.night_minutes, 0),
       round(extract(epoch FROM d.night_end - d.day_start) / 60)::int,
       round(coalesce(a.steps, 0))::int, coalesce(a.wear_minutes, 0),
       round(extract(epoch FROM d.day_end - d.day_start) / 60)::int,
       $2::timestamptz >= d.day_end, now()
FROM d LEFT JOIN agg a ON a.user_id = d.user_id AND a.day = d.day
ON CONFLICT (user_id, day) DO UPDATE SET
  time_zone = EXCLUDED.time_zone, rhr_night = EXCLUDED.rhr_night, rest_minutes = EXCLUDED.rest_minutes,
  night_minutes = EXCLUDED.night_minutes, night_length = EXCLUDED.night_length, steps = EXCLUDED.steps,
  wear_minutes = EXCLUDED.wear_minutes, day_length = EXCLUDED.day_length, day_complete = EXCLUDED.day_complete,
  computed_at = EXCLUDED.computed_at`
}

/**
 * Statement 2: heart-rate-reserve zone minutes and TRIMP, once the nights are in (Karvonen needs the personal resting
 * HR: the median of the last 28 valid nights up to that day; else users.resting_hr; else 60). HRmax: users.hr_max (an
 * observed maximum) or Tanaka 208 − 0.7·age (age 40 when the birth year is unknown).
 */
function zonesAndLoad(timescale: boolean): string {
  return `${prefix(timescale, true)},
p AS (
  SELECT d.user_id, d.day, u.sex,
         coalesce((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.rhr_night)
                   FROM (SELECT f.rhr_night FROM daily_features f
                         WHERE f.user_id = d.user_id AND f.day <= d.day AND f.rhr_night IS NOT NULL
                         ORDER BY f.day DESC LIMIT 28) x), u.resting_hr, 60)::float8 AS hr_rest,
         coalesce(u.hr_max, 208 - 0.7 * coalesce(extract(year FROM d.day) - u.birth_year, 40))::float8 AS hr_max
  FROM d JOIN u ON u.user_id = d.user_id
),
x AS (
  SELECT p.user_id, p.day, p.sex, p.hr_rest, p.hr_max, vm.hr / p.hr_max AS pmax,
         (vm.hr - p.hr_rest) / nullif(p.hr_max - p.hr_rest, 0) AS hrr
  FROM p JOIN vm ON vm.user_id = p.user_id AND vm.day = p.day AND vm.valid
),
z AS (
  SELECT p.user_id, p.day, p.hr_rest, p.hr_max,
         count(x.hrr) FILTER (WHERE x.hrr >= 0.4 AND x.hrr < 0.6)::int AS moderate,
         count(x.hrr) FILTER (WHERE x.hrr >= 0.6)::int AS vigorous,
         coalesce(sum(CASE WHEN x.pmax >= 0.9 THEN 5 WHEN x.pmax >= 0.8 THEN 4 WHEN x.pmax >= 0.7 THEN 3
                           WHEN x.pmax >= 0.6 THEN 2 WHEN x.pmax >= 0.5 THEN 1 ELSE 0 END), 0)::float8 AS edwards,
         CASE WHEN p.sex IS NOT NULL THEN coalesce(sum(
           least(1, greatest(0, x.hrr)) * CASE WHEN p.sex = 'male' THEN 0.64 * exp(1.92 * least(1, greatest(0, x.hrr)))
                                               ELSE 0.86 * exp(1.67 * least(1, greatest(0, x.hrr))) END), 0) END AS banister
  FROM p LEFT JOIN x ON x.user_id = p.user_id AND x.day = p.day
  GROUP BY p.user_id, p.day, p.sex, p.hr_rest, p.hr_max
)
UPDATE daily_features f SET moderate_min = z.moderate, vigorous_min = z.vigorous, edwards = z.edwards,
  banister = z.banister, load = coalesce(z.banister, z.edwards), hr_rest_used = z.hr_rest, hr_max_used = z.hr_max
FROM z WHERE f.user_id = z.user_id AND f.day = z.day`
}

/** Refreshes samples_1m over the range first where it is a continuous aggregate (no background jobs in PGlite). */
export async function computeFeatures(
  db: Db,
  timescale: boolean,
  userIds: readonly string[],
  at: Date,
  s: FeatureSettings = DEFAULT_FEATURE_SETTINGS,
): Promise<{ rows: number }> {
  if (userIds.length === 0) return { rows: 0 }
  // Per user: the whole history the first time; else back to the last day computed (a scheduler that was down for
  // days leaves no gap), at least the lookback (late uploads). Decided once: the first statement writes rows.
  const backs = await db.query<{ user_id: string; back: number }>(
    `SELECT x.user_id, CASE WHEN m.last IS NULL THEN $2::int
              ELSE least($2::int, greatest($3::int, ($4::timestamptz::date - m.last) + 1)) END AS back
     FROM unnest($1::text[]) AS x(user_id)
     LEFT JOIN LATERAL (SELECT max(f.day) AS last FROM daily_features f WHERE f.user_id = x.user_id) m ON true`,
    [userIds, s.historyDays, s.lookbackDays, at.toISOString()],
  )
  // Minutes from the earliest day any of them needs, wide enough for any zone (UTC−12…+14) and the 11 minutes before
  // that day's midnight.
  const maxBack = backs.rows.reduce((m, r) => Math.max(m, Number(r.back)), 0)
  const from = new Date(at.getTime() - (maxBack + 2) * DAY_MS)
  const to = at
  if (timescale) {
    // Only invalidated buckets are recomputed; the bucket being filled is left for the next run.
    const end = new Date(Math.floor(to.getTime() / 60_000) * 60_000)
    await db.exec(`CALL refresh_continuous_aggregate('samples_1m', '${from.toISOString()}', '${end.toISOString()}')`)
  }
  const params = [
    userIds,
    at.toISOString(),
    s.lookbackDays,
    s.historyDays,
    s.minSamplesPerMinute,
    from.toISOString(),
    to.toISOString(),
    backs.rows.map((r) => r.user_id),
    backs.rows.map((r) => Number(r.back)),
  ]
  // The minutes are aggregated once, into a temporary table both statements read (with statistics: the planner
  // otherwise guesses one row per CTE and sorts on disk).
  return db.transaction(async (q) => {
    await q.query(
      `CREATE TEMP TABLE insight_minutes (user_id text, bucket timestamptz, day date, night boolean, hr float8,
         hr_n float8, steps float8, valid boolean, steps12 float8) ON COMMIT DROP`,
    )
    await q.query(
      `INSERT INTO insight_minutes ${prefix(timescale, false)}
       SELECT user_id, bucket, day, night, hr, hr_n, steps, valid, steps12 FROM vm`,
      params,
    )
    await q.query('ANALYZE insight_minutes')
    const a = await q.query(nightsAndSteps(timescale), [...params, s.minRestMinutes])
    await q.query(zonesAndLoad(timescale), params)
    return { rows: a.rowCount }
  })
}

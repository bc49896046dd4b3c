// rhr_elevated (reference R6, NightSignal-style): the nightly resting HR ≥ max(4 bpm, 2 × 1.4826 × MAD) above the
// personal baseline (median of the last 28 valid nights before the two tested) on two consecutive nights. One message
// per episode; the episode clears after two normal nights (< baseline + 2 bpm), missing nights counting for neither.
// Raised severity when steps are also ≥ 30 % below their 28-day median (a second signal, as Apple Vitals requires).
import type { Candidate } from '../payload.js'
import { round1 } from '../payload.js'
import {
  type DailyRuleInput,
  type EpisodeWrite,
  num,
  type RuleResult,
  USER_DAY_COLUMNS,
  USER_DAY_CTE,
  type UserDayRow,
  WEAR_GATE_MINUTES,
} from './common.js'

export const RHR_VERSION = 1
export const MIN_BASELINE_NIGHTS = 7
const CLEAR_MARGIN = 2

const SQL = `WITH ${USER_DAY_CTE},
e AS (SELECT * FROM insight_episodes WHERE rule = 'rhr_elevated' AND user_id = ANY($1::text[])),
x AS (
  SELECT t.user_id, b.rhr_night FROM t LEFT JOIN e ON e.user_id = t.user_id
  CROSS JOIN LATERAL (
    SELECT f.rhr_night FROM daily_features f
    WHERE f.user_id = t.user_id AND f.rhr_night IS NOT NULL AND f.day >= t.today - 120
      AND f.day < CASE WHEN e.open THEN least(t.today - 1, e.started_on - 1) ELSE t.today - 1 END
    ORDER BY f.day DESC LIMIT 28) b
),
med AS (SELECT user_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY rhr_night) AS median, count(*)::int AS nights
        FROM x GROUP BY user_id),
mad AS (SELECT x.user_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY abs(x.rhr_night - med.median)) AS mad
        FROM x JOIN med ON med.user_id = x.user_id GROUP BY x.user_id),
st AS (SELECT t.user_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY f.steps) AS steps_median
       FROM t JOIN daily_features f ON f.user_id = t.user_id AND f.day BETWEEN t.today - 29 AND t.today - 2
       WHERE f.wear_minutes >= ${WEAR_GATE_MINUTES} GROUP BY t.user_id)
SELECT ${USER_DAY_COLUMNS}, $2::timestamptz >= ((t.today + time '07:00') AT TIME ZONE t.tz) AS night_closed,
       f0.rhr_night AS n0, f1.rhr_night AS n1,
       f0.night_minutes AS cov0_min, f0.night_length AS len0, f1.night_minutes AS cov1_min, f1.night_length AS len1,
       f1.steps AS steps1, f1.wear_minutes AS wear1, med.median, med.nights, mad.mad, st.steps_median,
       to_char(e.started_on, 'YYYY-MM-DD') AS ep_start, e.open AS ep_open, e.normal_nights,
       to_char(e.last_day, 'YYYY-MM-DD') AS ep_last
FROM t LEFT JOIN daily_features f0 ON f0.user_id = t.user_id AND f0.day = t.today
LEFT JOIN daily_features f1 ON f1.user_id = t.user_id AND f1.day = t.today - 1
LEFT JOIN med ON med.user_id = t.user_id LEFT JOIN mad ON mad.user_id = t.user_id
LEFT JOIN st ON st.user_id = t.user_id LEFT JOIN e ON e.user_id = t.user_id`

export interface RhrInput {
  userId: string
  today: string
  todayEnd: number
  /** last night (00:00–07:00 local today) is over: before that there is no "last night" to judge */
  nightClosed: boolean
  /** last night's and the night before's resting HR (null: too few rest minutes) */
  n0: number | null
  n1: number | null
  coverage0: number
  coverage1: number
  median: number | null
  mad: number | null
  nights: number
  steps1: number | null
  wear1: number | null
  stepsMedian: number | null
  episode: { startedOn: string; open: boolean; normalNights: number; lastDay: string } | null
}

function parse(r: Record<string, unknown>): RhrInput {
  const row = r as unknown as UserDayRow
  return {
    userId: row.user_id,
    today: row.today,
    todayEnd: Number(row.today_end),
    nightClosed: Boolean(r['night_closed']),
    n0: num(r['n0']),
    n1: num(r['n1']),
    coverage0: (num(r['cov0_min']) ?? 0) / (num(r['len0']) ?? 420),
    coverage1: (num(r['cov1_min']) ?? 0) / (num(r['len1']) ?? 420),
    median: num(r['median']),
    mad: num(r['mad']),
    nights: num(r['nights']) ?? 0,
    steps1: num(r['steps1']),
    wear1: num(r['wear1']),
    stepsMedian: num(r['steps_median']),
    episode:
      r['ep_start'] === null || r['ep_start'] === undefined
        ? null
        : {
            startedOn: String(r['ep_start']),
            open: Boolean(r['ep_open']),
            normalNights: num(r['normal_nights']) ?? 0,
            lastDay: String(r['ep_last']),
          },
  }
}

export function rhrThreshold(mad: number | null): number {
  return Math.max(4, 2 * 1.4826 * (mad ?? 0))
}

/** The decision for one user, from the numbers the statement gave (pure: unit-tested on its edges). */
export function decideRhr(i: RhrInput, at: number): { candidate: Candidate | null; episode: EpisodeWrite | null } {
  if (!i.nightClosed || i.median === null || i.nights < MIN_BASELINE_NIGHTS) return { candidate: null, episode: null }
  const baseline = i.median
  const thr = rhrThreshold(i.mad)
  const ep = i.episode
  if (ep?.open) {
    // The same day again (an operator's re-run): the same recommendation, hence the same id.
    if (ep.startedOn === i.today) return { candidate: candidate(i, baseline, thr, at), episode: null }
    if (ep.lastDay === i.today || i.n0 === null) return { candidate: null, episode: null }
    const normal = i.n0 < baseline + CLEAR_MARGIN ? ep.normalNights + 1 : 0
    return {
      candidate: null,
      episode: {
        ...ep,
        userId: i.userId,
        rule: 'rhr_elevated',
        open: normal < 2,
        normalNights: normal,
        lastDay: i.today,
      },
    }
  }
  if (i.n0 === null || i.n1 === null) return { candidate: null, episode: null }
  if (i.n0 - baseline < thr || i.n1 - baseline < thr) return { candidate: null, episode: null }
  return {
    candidate: candidate(i, baseline, thr, at),
    episode: {
      userId: i.userId,
      rule: 'rhr_elevated',
      startedOn: i.today,
      open: true,
      normalNights: 0,
      lastDay: i.today,
    },
  }
}

function candidate(i: RhrInput, baseline: number, thr: number, at: number): Candidate {
  const n0 = i.n0 ?? baseline
  const n1 = i.n1 ?? baseline
  const mean = (n0 + n1) / 2
  const above = Math.round(mean - baseline)
  const lowSteps =
    i.steps1 !== null &&
    i.stepsMedian !== null &&
    i.stepsMedian > 0 &&
    (i.wear1 ?? 0) >= WEAR_GATE_MINUTES &&
    i.steps1 <= 0.7 * i.stepsMedian
  const second = lowSteps ? ' Your steps were also well below your usual yesterday.' : ''
  return {
    userId: i.userId,
    rule: 'rhr_elevated',
    version: RHR_VERSION,
    priority: 'recovery',
    episode: i.episode?.open ? i.episode.startedOn : i.today,
    title: lowSteps ? 'Take it easy today' : 'Your resting heart rate is up',
    message:
      `Your resting heart rate has been about ${above} bpm above your usual (${Math.round(mean)} vs ` +
      `${Math.round(baseline)}) for 2 nights.${second} This often follows hard training, short sleep, alcohol, ` +
      'stress, travel or the start of an illness. An easier day and extra rest may help. If you feel unwell, follow ' +
      'local health advice.',
    evidence: {
      metric: 'rhr_night',
      value: round1(n0),
      baseline: round1(baseline),
      window: `${i.nights} nights`,
      threshold: `+${round1(thr)} bpm × 2 nights`,
      coverage: round1(Math.min(i.coverage0, i.coverage1) * 100) / 100,
    },
    createdAt: at,
    expiresAt: Math.max(i.todayEnd, at + 3600_000),
    localDay: i.today,
  }
}

export async function evaluateRhr(input: DailyRuleInput): Promise<RuleResult> {
  const rows = await input.db.query(SQL, [input.userIds, input.at.toISOString()])
  const out: RuleResult = { candidates: [], episodes: [] }
  for (const r of rows.rows) {
    const d = decideRhr(parse(r), input.at.getTime())
    if (d.candidate) out.candidates.push(d.candidate)
    if (d.episode) out.episodes.push(d.episode)
  }
  return out
}

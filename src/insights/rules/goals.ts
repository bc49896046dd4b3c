// Goal rules. zone_minutes_weekly (R7): zone minutes = moderate + 2 × vigorous (ACSM 40–59 % / ≥ 60 % HRR) over the
// ISO week so far, against the WHO 150–300 min: a nudge the morning after Wednesday when the week is on course for
// less than 150, a celebration when 150 and when 300 are passed. step_goal (R8): today's goal is the 60th percentile
// of the last 28 worn days, clamped to [3000, 7000 if age ≥ 60 else 9000] (Paluch 2022), raised at most 10 % on the
// last goal of the past week; the user's own goal (preferences goals.steps) wins; nothing is sent to someone already at
// the target.
import type { Preferences } from '../preferences/reader.js'
import type { Candidate } from '../payload.js'
import {
  type DailyRuleInput,
  num,
  type RuleResult,
  USER_DAY_COLUMNS,
  USER_DAY_CTE,
  type UserDayRow,
  WEAR_GATE_MINUTES,
} from './common.js'

export const ZONES_VERSION = 1
export const STEPS_VERSION = 1

const ZONES_SQL = `WITH ${USER_DAY_CTE},
w AS (SELECT t.*, date_trunc('week', t.today - 1)::date AS week_start FROM t)
SELECT ${USER_DAY_COLUMNS}, to_char(t.week_start, 'YYYY-MM-DD') AS week, extract(isodow FROM t.today - 1)::int AS dow,
       (t.today - t.week_start)::int AS week_days,
       coalesce(sum(f.moderate_min + 2 * f.vigorous_min), 0)::int AS wtd,
       coalesce(sum(f.moderate_min + 2 * f.vigorous_min) FILTER (WHERE f.day < t.today - 1), 0)::int AS wtd_before,
       count(f.day) FILTER (WHERE f.wear_minutes >= ${WEAR_GATE_MINUTES})::int AS covered
FROM w t LEFT JOIN daily_features f ON f.user_id = t.user_id AND f.day >= t.week_start AND f.day <= t.today - 1
GROUP BY t.user_id, t.today, t.today_end, t.week_start`

export interface ZonesInput {
  userId: string
  today: string
  todayEnd: number
  /** Monday of the week that includes yesterday */
  week: string
  /** yesterday's ISO weekday */
  dow: number
  /** days of the week so far (through yesterday) */
  weekDays: number
  wtd: number
  wtdBefore: number
  covered: number
}

export function decideZones(i: ZonesInput, at: number): Candidate | null {
  const base = {
    userId: i.userId,
    rule: 'zone_minutes_weekly' as const,
    version: ZONES_VERSION,
    priority: 'goal' as const,
    createdAt: at,
    expiresAt: Math.max(i.todayEnd, at + 3600_000),
    localDay: i.today,
  }
  const evidence = (threshold: string, missing?: string) => ({
    metric: 'zone_minutes_7d',
    value: i.wtd,
    baseline: null,
    window: `week of ${i.week}, ${i.weekDays} days`,
    threshold,
    coverage: Math.round((i.covered / Math.max(1, i.weekDays)) * 100) / 100,
    ...(missing ? { missing } : {}),
  })
  for (const goal of [300, 150]) {
    if (i.wtd >= goal && i.wtdBefore < goal)
      return {
        ...base,
        episode: `${i.week}:${goal}`,
        title: goal === 300 ? '300 zone minutes this week' : '150 zone minutes reached',
        message:
          goal === 300
            ? `You've earned ${i.wtd} zone minutes this week — the upper end of what health guidelines suggest (150–300 a week). Great work; easy days count too.`
            : `You've earned ${i.wtd} zone minutes this week and reached 150, what health guidelines suggest as a weekly minimum. Well done.`,
        evidence: evidence(`≥ ${goal} zone minutes`),
      }
  }
  // The mid-week nudge: the morning after Wednesday, on course for less than 150.
  if (i.dow !== 3 || i.weekDays !== 3) return null
  if (i.wtd * (7 / 3) >= 150) return null
  // Quality gate: with two of the three days unworn there is nothing to say (the minutes may simply not be seen).
  if (i.covered < 2) return null
  const missing = i.covered < 3 ? `${3 - i.covered} of 3 days had too little wear time to count fully` : undefined
  const perDay = Math.ceil((150 - i.wtd) / 4)
  const walks = Math.max(1, Math.ceil((150 - i.wtd) / 20))
  return {
    ...base,
    episode: `${i.week}:midweek`,
    title: 'Zone minutes: halfway through the week',
    message:
      `You've earned ${i.wtd} zone minutes this week; about ${perDay} a day until Sunday (for example ${walks} brisk ` +
      `20-minute walks) would reach 150. Health guidelines suggest 150–300 moderate minutes a week.` +
      (missing ? ` Some days had little wear time, so the count may be low.` : ''),
    evidence: evidence('projected < 150 by Sunday', missing),
  }
}

const STEPS_SQL = `WITH ${USER_DAY_CTE}
SELECT ${USER_DAY_COLUMNS}, t.birth_year, extract(year FROM t.today)::int AS year,
       percentile_disc(0.6) WITHIN GROUP (ORDER BY f.steps) AS p60, count(f.day)::int AS valid_days,
       (SELECT (r.payload -> 'evidence' ->> 'threshold')::float8 FROM recommendations r
        WHERE r.user_id = t.user_id AND r.rule = 'step_goal' AND r.local_day >= t.today - 7 AND r.local_day < t.today
        ORDER BY r.local_day DESC LIMIT 1) AS prev_goal,
       (SELECT f1.steps FROM daily_features f1 WHERE f1.user_id = t.user_id AND f1.day = t.today - 1) AS yesterday
FROM t LEFT JOIN daily_features f ON f.user_id = t.user_id AND f.day BETWEEN t.today - 28 AND t.today - 1
  AND f.wear_minutes >= ${WEAR_GATE_MINUTES}
GROUP BY t.user_id, t.today, t.today_end, t.birth_year`

export interface StepsInput {
  userId: string
  today: string
  todayEnd: number
  age: number | null
  p60: number | null
  validDays: number
  prevGoal: number | null
  yesterday: number | null
}

export const MIN_STEP_DAYS = 9

export function stepTarget(age: number | null): number {
  return age !== null && age >= 60 ? 7000 : 9000
}

export function decideSteps(i: StepsInput, prefs: Preferences, at: number): Candidate | null {
  if (i.p60 === null || i.validDays < MIN_STEP_DAYS) return null
  const target = prefs.goals?.steps ?? stepTarget(i.age)
  if (i.p60 >= target) return null
  let goal = prefs.goals?.steps ?? Math.min(target, Math.max(3000, Math.round(i.p60 / 100) * 100))
  if (prefs.goals?.steps === undefined && i.prevGoal !== null) goal = Math.min(goal, Math.round(i.prevGoal * 1.1))
  const typical = Math.round(i.p60 / 100) * 100
  return {
    userId: i.userId,
    rule: 'step_goal',
    version: STEPS_VERSION,
    priority: 'goal',
    episode: i.today,
    title: `Today's goal: ${goal.toLocaleString('en-US')} steps`,
    message:
      `Today's goal: ${goal.toLocaleString('en-US')} steps — ${goal > typical ? 'a little above' : 'about'} your ` +
      `typical day (${typical.toLocaleString('en-US')}). In large studies, people averaging ~8,000 steps a day ` +
      'had markedly lower mortality than those at ~4,000.',
    evidence: {
      metric: 'steps_daily',
      value: i.yesterday,
      baseline: i.p60,
      window: `${i.validDays} worn days of the last 28`,
      threshold: String(goal),
      coverage: Math.round((i.validDays / 28) * 100) / 100,
    },
    createdAt: at,
    expiresAt: Math.max(i.todayEnd, at + 3600_000),
    localDay: i.today,
  }
}

export async function evaluateZones(input: DailyRuleInput): Promise<RuleResult> {
  const rows = await input.db.query(ZONES_SQL, [input.userIds, input.at.toISOString()])
  const candidates: Candidate[] = []
  for (const r of rows.rows) {
    const row = r as unknown as UserDayRow
    const c = decideZones(
      {
        userId: row.user_id,
        today: row.today,
        todayEnd: Number(row.today_end),
        week: String(r['week']),
        dow: Number(r['dow']),
        weekDays: Number(r['week_days']),
        wtd: Number(r['wtd']),
        wtdBefore: Number(r['wtd_before']),
        covered: Number(r['covered']),
      },
      input.at.getTime(),
    )
    if (c) candidates.push(c)
  }
  return { candidates, episodes: [] }
}

export async function evaluateSteps(
  input: DailyRuleInput,
  prefs: (userId: string) => Preferences,
): Promise<RuleResult> {
  const rows = await input.db.query(STEPS_SQL, [input.userIds, input.at.toISOString()])
  const candidates: Candidate[] = []
  for (const r of rows.rows) {
    const row = r as unknown as UserDayRow
    const by = num(r['birth_year'])
    const c = decideSteps(
      {
        userId: row.user_id,
        today: row.today,
        todayEnd: Number(row.today_end),
        age: by === null ? null : Number(r['year']) - by,
        p60: num(r['p60']),
        validDays: Number(r['valid_days']),
        prevGoal: num(r['prev_goal']),
        yesterday: num(r['yesterday']),
      },
      prefs(row.user_id),
      input.at.getTime(),
    )
    if (c) candidates.push(c)
  }
  return { candidates, episodes: [] }
}

// `--scenario wellness --history-days N`: weeks of wellness history written set-wise on a virtual clock (per-minute
// HR, steps every 10 minutes, straight into `samples` as the import path stores them), with a known share of users
// planted with a condition one of the daily rules (src/insights/rules/*.ts) must find, then the daily rules at the
// virtual "now" and a score: per planted rule, who got it against who was planted. The history ends at the run's start,
// so the live part continues it.
import type { Queryable } from '../src/store/db.js'
import { hashSeed, Rng } from './physiology.js'

/** The rules with a planted condition, and what is planted (the rules' own thresholds, with margin). */
export const PLANTED_RULES = ['rhr_elevated', 'load_jump', 'step_goal'] as const
export type PlantedRule = (typeof PLANTED_RULES)[number]

/** load_jump needs ≥ 28 days of history (MIN_LOAD_HISTORY_DAYS) before it says anything. */
export const LOAD_MIN_HISTORY_DAYS = 28
/** rhr_elevated needs 7 baseline nights before the two tested; step_goal 9 worn days. */
export const MIN_HISTORY_DAYS = 10

export interface WellnessPlan {
  /** the planted users of each rule (the rest are controls for that rule) */
  planted: Record<PlantedRule, string[]>
  /** an Etc/GMT zone where the run's start is late morning: the night has closed and the daily rules are due */
  zone: string
  nowMs: number
  days: number
}

/**
 * Splits `share` of the users evenly over the planted rules, chosen by a seeded shuffle; each user carries at most one
 * condition (an rhr_elevated message is a recovery one, which holds back goal nudges that day).
 */
export function planWellness(
  userIds: readonly string[],
  opts: { share: number; seed: number; days: number; nowMs: number },
): WellnessPlan {
  const rules = PLANTED_RULES.filter((r) => r !== 'load_jump' || opts.days >= LOAD_MIN_HISTORY_DAYS)
  const each = opts.share > 0 ? Math.max(1, Math.round((userIds.length * opts.share) / rules.length)) : 0
  const order = [...userIds]
  const rng = new Rng(hashSeed(opts.seed, 'wellness-plant'))
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1))
    ;[order[i], order[j]] = [order[j] as string, order[i] as string]
  }
  const planted: Record<PlantedRule, string[]> = { rhr_elevated: [], load_jump: [], step_goal: [] }
  rules.forEach((r, k) => {
    planted[r] = order.slice(k * each, (k + 1) * each).sort()
  })
  return { planted, zone: lateMorningZone(opts.nowMs), nowMs: opts.nowMs, days: opts.days }
}

/** The whole-hour zone where `nowMs` is 11:xx local (Etc/GMT signs are inverted: Etc/GMT-3 is UTC+3). */
export function lateMorningZone(nowMs: number): string {
  let off = 11 - new Date(nowMs).getUTCHours()
  if (off < -12) off += 24
  if (off > 14) off -= 24
  return off === 0 ? 'Etc/GMT' : `Etc/GMT${off > 0 ? '-' : '+'}${Math.abs(off)}`
}

/**
 * The history, one statement per chunk of users. Per local day (the `days` full days before today, and today up to a
 * minute before now): HR every minute (night 00:00–07:00 at the user's resting HR + 0…1.5 bpm of day-to-day noise, no
 * steps, so every night minute is rest-qualified; 70 bpm by day, below 50 % HRmax for every age, so no load; 62 after
 * 22:00), steps every 10 minutes 07:05–21:55. Planted:
 * - rhr_elevated: the last two nights (yesterday's and today's) +8 bpm (the rule: ≥ max(4, 2·1.4826·MAD) ≈ 4);
 * - load_jump: a daily 30 min at 125 bpm from 18:00, then 150 min at 155 bpm on the last three days (≥ 5× the load:
 *   EWMA acute/chronic ≥ 1.6 on yesterday and the day before; the rule: ≥ 1.5 both days);
 * - step_goal: 4,000–5,000 steps a day (the others 11,000–12,000, above every age's target of 7,000 / 9,000).
 */
export async function writeHistory(
  db: Queryable,
  plan: WellnessPlan,
  users: readonly { userId: string; deviceId: string }[],
  chunk = 50,
): Promise<{ rows: number; ms: number }> {
  const started = performance.now()
  const cls = new Map<string, string>()
  for (const r of PLANTED_RULES) for (const u of plan.planted[r]) cls.set(u, r)
  let rows = 0
  for (let i = 0; i < users.length; i += chunk) {
    const part = users.slice(i, i + chunk)
    const res = await db.query(
      `WITH n AS (SELECT $1::timestamptz AS now, ($1::timestamptz AT TIME ZONE $2::text)::date AS today),
       u AS (SELECT x.*, d.device_key FROM unnest($4::text[], $5::text[], $6::text[], $7::float8[])
               AS x(user_id, device_id, cls, rhr) JOIN devices d ON d.device_id = x.device_id)
       INSERT INTO samples (time, device_key, metric, value)
       SELECT s.ts, s.device_key, s.metric, s.value FROM (
         SELECT ((g.day::date + make_interval(mins => m.m)) AT TIME ZONE $2::text) AS ts, u.device_key, k.metric,
           CASE
             WHEN k.metric = 3 THEN (CASE WHEN u.cls = 'step_goal' THEN 4000 ELSE 11000 END
                                     + abs(hashtext(u.user_id || g.day::date || 's')) % 1000) / 90.0
             WHEN m.m < 420 THEN u.rhr + (abs(hashtext(u.user_id || g.day::date)) % 16) / 10.0
                                 + CASE WHEN u.cls = 'rhr_elevated' AND g.day::date >= n.today - 1 THEN 8 ELSE 0 END
             WHEN u.cls = 'load_jump' AND g.day::date < n.today AND m.m >= 1080
                  AND m.m < 1080 + CASE WHEN g.day::date >= n.today - 3 THEN 150 ELSE 30 END
               THEN CASE WHEN g.day::date >= n.today - 3 THEN 155 ELSE 125 END
             WHEN m.m < 1320 THEN 70
             ELSE 62
           END AS value
         FROM u CROSS JOIN n
         CROSS JOIN generate_series((n.today - $3::int)::timestamp, n.today::timestamp, interval '1 day') g(day)
         CROSS JOIN generate_series(0, 1439) m(m)
         CROSS JOIN (VALUES (1), (3)) k(metric)
         WHERE k.metric = 1 OR (m.m >= 425 AND m.m < 1320 AND m.m % 10 = 5)
       ) s CROSS JOIN n WHERE s.ts < n.now - interval '1 minute'
       ON CONFLICT DO NOTHING`,
      [
        new Date(plan.nowMs).toISOString(),
        plan.zone,
        plan.days,
        part.map((u) => u.userId),
        part.map((u) => u.deviceId),
        part.map((u) => cls.get(u.userId) ?? 'none'),
        part.map((u) => 48 + (Number.parseInt(u.userId.replace(/\D/g, '').slice(-3) || '0', 10) % 10)),
      ],
    )
    rows += res.rowCount
  }
  return { rows, ms: Math.round(performance.now() - started) }
}

/** The users live in the plan's zone and have granted `recommendations` (a history row only where not granted yet). */
export async function prepareUsers(db: Queryable, plan: WellnessPlan, userIds: readonly string[]): Promise<void> {
  await db.query('UPDATE users SET time_zone = $2 WHERE user_id = ANY($1::text[]) AND time_zone <> $2', [
    userIds,
    plan.zone,
  ])
}

export async function grantRecommendations(db: Queryable, userIds: readonly string[]): Promise<void> {
  await db.query(
    `INSERT INTO consents (user_id, purpose, granted, source, version)
     SELECT x.u, 'recommendations', true, 'cli', coalesce(c.version, 0) + 1 FROM unnest($1::text[]) x(u)
     LEFT JOIN LATERAL (SELECT version, granted FROM consents WHERE user_id = x.u AND purpose = 'recommendations'
                        AND event_id IS NULL ORDER BY version DESC LIMIT 1) c ON true
     WHERE c.granted IS NOT TRUE`,
    [userIds],
  )
}

export interface RuleScore {
  planted: number
  truePositives: number
  falsePositives: number
  falseNegatives: number
  trueNegatives: number
  /** null when nothing was recommended (no positives to be right about) */
  precision: number | null
  /** null when nothing was planted */
  recall: number | null
  /** users of each kind of mistake (the first 20) */
  falsePositiveUsers: string[]
  falseNegativeUsers: string[]
}

/** What the daily rules recommended at the run (the recommendations table: delivered now or earlier with the same id). */
export async function recommended(
  db: Queryable,
  userIds: readonly string[],
  atMs: number,
): Promise<{ user_id: string; rule: string; id: string }[]> {
  const res = await db.query<{ user_id: string; rule: string; id: string }>(
    `SELECT r.user_id, r.rule, r.id FROM recommendations r JOIN users us ON us.user_id = r.user_id
     WHERE r.user_id = ANY($1::text[]) AND r.local_day = ($2::timestamptz AT TIME ZONE us.time_zone)::date`,
    [userIds, new Date(atMs).toISOString()],
  )
  return res.rows
}

export function score(
  plan: WellnessPlan,
  userIds: readonly string[],
  got: readonly { user_id: string; rule: string }[],
): Record<PlantedRule, RuleScore> {
  const out = {} as Record<PlantedRule, RuleScore>
  for (const rule of PLANTED_RULES) {
    const planted = new Set(plan.planted[rule])
    const hit = new Set(got.filter((g) => g.rule === rule).map((g) => g.user_id))
    const tp = [...hit].filter((u) => planted.has(u))
    const fp = [...hit].filter((u) => !planted.has(u)).sort()
    const fn = [...planted].filter((u) => !hit.has(u)).sort()
    const tn = userIds.length - tp.length - fp.length - fn.length
    out[rule] = {
      planted: planted.size,
      truePositives: tp.length,
      falsePositives: fp.length,
      falseNegatives: fn.length,
      trueNegatives: tn,
      precision: hit.size === 0 ? null : tp.length / hit.size,
      recall: planted.size === 0 ? null : tp.length / planted.size,
      falsePositiveUsers: fp.slice(0, 20),
      falseNegativeUsers: fn.slice(0, 20),
    }
  }
  return out
}

/** Below the thresholds: a rule with planted users needs both; with none planted, any recommendation is a miss. */
export function scoreFailures(
  scores: Record<PlantedRule, RuleScore>,
  minPrecision: number,
  minRecall: number,
): string[] {
  const out: string[] = []
  for (const rule of PLANTED_RULES) {
    const s = scores[rule]
    const precision = s.precision ?? (s.planted === 0 ? 1 : 0)
    const recall = s.recall ?? 1
    if (precision < minPrecision) out.push(`${rule} precision ${precision.toFixed(3)} < ${minPrecision}`)
    if (recall < minRecall) out.push(`${rule} recall ${recall.toFixed(3)} < ${minRecall}`)
  }
  return out
}

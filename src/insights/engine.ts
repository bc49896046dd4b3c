// The recommendation engine: daily rules when a user's night has closed in their time zone (spread over a window so
// a million users do not all compute at 07:30), move reminders streaming on committed batches, and runs on demand
// (`pulsegate insights run`). Only users with the `recommendations` consent are evaluated at all. It reads committed
// data and rollups only (features.ts), never the raw ingest path; what it proposes goes through delivery.ts.
import type { Logger } from '../log.js'
import type { ConsentGate } from '../outputs/consent-gate.js'
import type { CommittedBatch, Publisher } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import { DEFAULT_COOLDOWNS, Delivery, type DeliveryReport } from './delivery.js'
import { computeFeatures, DEFAULT_FEATURE_SETTINGS, type FeatureSettings } from './features.js'
import { localParts, safeZone } from './local-time.js'
import type { InsightsMetrics } from './metrics.js'
import type { Candidate, RuleId } from './payload.js'
import type { PreferencesReader } from './preferences/reader.js'
import { type DailyRuleInput, type EpisodeWrite, USER_DAY_CTE, writeEpisodes } from './rules/common.js'
import { evaluateSteps, evaluateZones } from './rules/goals.js'
import { evaluateLoad } from './rules/load.js'
import { evaluateMove } from './rules/move.js'
import { evaluateRhr } from './rules/rhr.js'

export interface InsightsSettings {
  enabled: boolean
  tickMs: number
  dailyAt: string
  spreadMinutes: number
  maxUsersPerTick: number
  dailyBudget: number
  minSamplesPerMinute: number
  activeStart: string
  activeEnd: string
  historyDays: number
}

export interface InsightsDeps {
  db: Db
  timescale: () => boolean
  consent: ConsentGate
  preferences: PreferencesReader & { load(userIds: readonly string[]): Promise<void> }
  publisher: Publisher
  metrics: InsightsMetrics
  log: Logger
  settings: InsightsSettings
  /** the clock (tests move it) */
  now?: () => number
}

export interface RunOptions {
  userIds?: readonly string[]
  rule?: RuleId
  at?: Date
  /** benchmarks: evaluate the rules on the features as stored, without recomputing them from the minutes */
  skipFeatures?: boolean
}

export interface RunReport {
  at: string
  users: number
  /** users asked for who have not granted `recommendations` (nothing was evaluated for them) */
  withoutConsent: string[]
  candidates: number
  delivered: DeliveryReport['delivered']
  redelivered: DeliveryReport['redelivered']
  suppressed: DeliveryReport['suppressed']
}

const CONSENTED_SQL = `SELECT us.user_id FROM users us WHERE (SELECT c.granted FROM consents c
  WHERE c.user_id = us.user_id AND c.purpose = 'recommendations' AND c.event_id IS NULL ORDER BY c.version DESC LIMIT 1)`

/** Users whose local time has passed dailyAt + their spread offset, not yet evaluated today, with consent. */
const DUE_SQL = `SELECT us.user_id FROM users us
  LEFT JOIN user_preferences p ON p.user_id = us.user_id AND p.field = 'timeZone'
  CROSS JOIN LATERAL (SELECT coalesce(CASE WHEN jsonb_typeof(p.value) = 'string' THEN p.value #>> '{}' END,
                                      us.time_zone) AS tz) z
  WHERE ($1::timestamptz AT TIME ZONE z.tz) >= (($1::timestamptz AT TIME ZONE z.tz)::date + $2::interval
          + make_interval(mins => mod(abs(hashtext(us.user_id)::bigint), $3::int)::int))
    AND NOT EXISTS (SELECT 1 FROM daily_features f WHERE f.user_id = us.user_id
                    AND f.day = ($1::timestamptz AT TIME ZONE z.tz)::date AND f.evaluated_at IS NOT NULL)
    AND (SELECT c.granted FROM consents c WHERE c.user_id = us.user_id AND c.purpose = 'recommendations'
         AND c.event_id IS NULL ORDER BY c.version DESC LIMIT 1)
  ORDER BY us.user_id LIMIT $4`

const DAILY_RULES: readonly RuleId[] = ['rhr_elevated', 'zone_minutes_weekly', 'step_goal', 'load_jump', 'recovery_day']

export class InsightsEngine {
  private readonly delivery: Delivery
  private readonly now: () => number
  private readonly zones = new Map<string, string>()
  private timer: NodeJS.Timeout | null = null
  private ticking: Promise<void> | null = null
  private stopped = false
  /** move reminders: users with a recent committed batch, evaluated together shortly after */
  private readonly pendingMove = new Set<string>()
  private moveTimer: NodeJS.Timeout | null = null
  private moving: Promise<void> = Promise.resolve()
  /** per user, the local minute last checked for a move reminder (at most one statement per user and minute) */
  private readonly moveChecked = new Map<string, string>()
  private readonly features: FeatureSettings

  constructor(private readonly deps: InsightsDeps) {
    this.now = deps.now ?? Date.now
    this.features = {
      ...DEFAULT_FEATURE_SETTINGS,
      minSamplesPerMinute: deps.settings.minSamplesPerMinute,
      historyDays: deps.settings.historyDays,
    }
    this.delivery = new Delivery(
      deps.db,
      deps.consent,
      deps.preferences,
      deps.publisher,
      deps.metrics,
      { dailyBudget: deps.settings.dailyBudget, cooldownMs: DEFAULT_COOLDOWNS },
      deps.log,
      (userId) => this.zones.get(userId) ?? 'UTC',
    )
  }

  start(): void {
    if (!this.deps.settings.enabled) return
    this.timer = setInterval(() => {
      this.ticking ??= this.tick().finally(() => {
        this.ticking = null
      })
    }, this.deps.settings.tickMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearInterval(this.timer)
    if (this.moveTimer) clearTimeout(this.moveTimer)
    await Promise.allSettled([this.ticking, this.moving])
  }

  /** One scheduling round: the users due now, evaluated together (features, daily rules, delivery). */
  async tick(): Promise<void> {
    const at = new Date(this.now())
    try {
      const due = await this.deps.db.query<{ user_id: string }>(DUE_SQL, [
        at.toISOString(),
        `${this.deps.settings.dailyAt}:00`,
        this.deps.settings.spreadMinutes,
        this.deps.settings.maxUsersPerTick,
      ])
      if (due.rows.length === 0) return
      await this.evaluate(
        due.rows.map((r) => r.user_id),
        at,
        DAILY_RULES,
        'daily',
        true,
      )
    } catch (err) {
      this.deps.metrics.failures.inc({ kind: 'daily' })
      this.deps.log.warn({ err: (err as Error).message }, 'insights daily round failed')
    }
  }

  /** `pulsegate insights run`: the given users (default: everyone with consent), one rule or all, at an instant. */
  async run(opts: RunOptions = {}): Promise<RunReport> {
    const at = opts.at ?? new Date(this.now())
    const asked =
      opts.userIds && opts.userIds.length > 0
        ? [...opts.userIds]
        : (await this.deps.db.query<{ user_id: string }>(CONSENTED_SQL)).rows.map((r) => r.user_id)
    const rules = opts.rule ? [opts.rule] : [...DAILY_RULES, 'move_reminder' as const]
    return this.evaluate(asked, at, rules, 'manual', opts.rule === undefined, opts.skipFeatures === true)
  }

  private async evaluate(
    asked: readonly string[],
    at: Date,
    rules: readonly RuleId[],
    kind: 'daily' | 'manual' | 'streaming',
    markEvaluated: boolean,
    skipFeatures = false,
  ): Promise<RunReport> {
    const started = performance.now()
    const { db, consent, preferences, metrics } = this.deps
    await consent.load(asked)
    const userIds = asked.filter((u) => consent.allows(u, 'recommendations'))
    const report: RunReport = {
      at: at.toISOString(),
      users: userIds.length,
      withoutConsent: asked.filter((u) => !consent.allows(u, 'recommendations')),
      candidates: 0,
      delivered: [],
      redelivered: [],
      suppressed: [],
    }
    if (userIds.length === 0) return report
    await preferences.load(userIds)
    await this.loadZones(userIds)
    const daily = rules.filter((r) => r !== 'move_reminder')
    const input: DailyRuleInput = { db, userIds, at }
    const candidates: Candidate[] = []
    const episodes: EpisodeWrite[] = []
    const add = (r: { candidates: Candidate[]; episodes: EpisodeWrite[] }) => {
      candidates.push(...r.candidates)
      episodes.push(...r.episodes)
    }
    if (daily.length > 0) {
      if (!skipFeatures) await computeFeatures(db, this.deps.timescale(), userIds, at, this.features)
      if (daily.includes('rhr_elevated')) add(await evaluateRhr(input))
      if (daily.includes('zone_minutes_weekly')) add(await evaluateZones(input))
      if (daily.includes('step_goal')) add(await evaluateSteps(input, (u) => preferences.get(u)))
      if (daily.includes('load_jump') || daily.includes('recovery_day'))
        add(
          await evaluateLoad(input, {
            loadJump: daily.includes('load_jump'),
            recovery: daily.includes('recovery_day'),
          }),
        )
    }
    if (rules.includes('move_reminder')) add(await evaluateMove(input, this.deps.settings))
    await writeEpisodes(db, episodes)
    const delivered = await this.delivery.deliver(candidates, at.getTime())
    if (markEvaluated && daily.length > 0)
      await db.query(
        `WITH ${USER_DAY_CTE}
         UPDATE daily_features f SET evaluated_at = $2::timestamptz FROM t WHERE f.user_id = t.user_id AND f.day = t.today`,
        [userIds, at.toISOString()],
      )
    metrics.runs.inc({ kind })
    metrics.users.inc({ kind }, userIds.length)
    metrics.seconds.observe({ kind }, (performance.now() - started) / 1000)
    return { ...report, candidates: candidates.length, ...delivered }
  }

  /** Erasure: what this engine holds in memory about the user (their zone, move-reminder bookkeeping). */
  forget(userId: string): void {
    this.zones.delete(userId)
    this.moveChecked.delete(userId)
    this.pendingMove.delete(userId)
  }

  /** The zone of users without one in their preferences: users.time_zone, cached. */
  private async loadZones(userIds: readonly string[]): Promise<void> {
    const missing = userIds.filter((u) => !this.zones.has(u))
    if (missing.length === 0) return
    const res = await this.deps.db.query<{ user_id: string; time_zone: string }>(
      'SELECT user_id, time_zone FROM users WHERE user_id = ANY($1::text[])',
      [missing],
    )
    for (const r of res.rows) this.zones.set(r.user_id, r.time_zone)
  }

  private zoneOf(userId: string): string {
    return safeZone(this.deps.preferences.get(userId).timeZone ?? this.zones.get(userId))
  }

  /**
   * The output engine's committed-batch path (ingest.onCommitted): a user whose recent batch falls at :50 or later
   * of a local hour is checked for a move reminder, together with the others of the same second.
   */
  onCommitted(batch: CommittedBatch): void {
    if (this.stopped || !this.deps.settings.enabled) return
    let newest = 0
    for (const s of batch.scalars) if (s.t > newest) newest = s.t
    // Backfill (a tracker uploading yesterday) says nothing about being still now.
    if (newest === 0 || this.now() - newest > 10 * 60_000) return
    this.pendingMove.add(batch.userId)
    this.moveTimer ??= setTimeout(() => {
      this.moveTimer = null
      this.moving = this.moving.then(() => this.flushMove())
    }, 1000)
  }

  /** Test hook: runs the pending move checks now and resolves when they are done. */
  async flushMoves(): Promise<void> {
    if (this.moveTimer) {
      clearTimeout(this.moveTimer)
      this.moveTimer = null
    }
    this.moving = this.moving.then(() => this.flushMove())
    await this.moving
  }

  private async flushMove(): Promise<void> {
    const users = [...this.pendingMove]
    this.pendingMove.clear()
    if (users.length === 0 || this.stopped) return
    const at = this.now()
    try {
      await this.loadZones(users)
      await this.deps.preferences.load(users)
      const due = users.filter((u) => {
        const lp = localParts(at, this.zoneOf(u))
        const key = `${lp.date}T${lp.hour}:${lp.minute}`
        if (lp.minute < 50 || this.moveChecked.get(u) === key) return false
        this.moveChecked.set(u, key)
        return true
      })
      if (this.moveChecked.size > 1_000_000) this.moveChecked.clear()
      if (due.length > 0) await this.evaluate(due, new Date(at), ['move_reminder'], 'streaming', false)
    } catch (err) {
      this.deps.metrics.failures.inc({ kind: 'streaming' })
      this.deps.log.warn({ err: (err as Error).message }, 'move reminder round failed')
    }
  }
}

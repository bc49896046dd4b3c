// Between the rules and the user: consent, muted rules, quiet hours, a recovery day, per-rule cooldowns and the daily
// budget, in priority order (safety > recovery > load > goal > nudge). What passes is stored in `recommendations`
// (the id is the primary key) and published on users/{uid}/recommendations, QoS 1, not retained. A candidate whose id
// was already stored is a redelivery: the stored payload goes out again with the same id and uses no budget.
// Every hold-back is counted by rule and reason (pulsegate_recommendations_suppressed_total).
import type { Logger } from '../log.js'
import type { ConsentGate } from '../outputs/consent-gate.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Queryable } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import { hhmm, inWindow, localParts, safeZone } from './local-time.js'
import type { InsightsMetrics } from './metrics.js'
import { buildPayload, type Candidate, PRIORITY_RANK, type RecommendationPayload, type RuleId } from './payload.js'
import type { PreferencesReader } from './preferences/reader.js'

export type SuppressReason = 'consent' | 'muted' | 'expired' | 'quiet_hours' | 'recovery_day' | 'cooldown' | 'budget'

export interface DeliverySettings {
  /** non-safety recommendations per user and local day */
  dailyBudget: number
  /** after a rule's message, the same rule waits this long (ms) before another (a new episode) */
  cooldownMs: Record<RuleId, number>
}

export const DEFAULT_COOLDOWNS: Record<RuleId, number> = {
  rhr_elevated: 0, // once per episode: the id is the episode
  zone_minutes_weekly: 0, // one per week and milestone: the id says which
  step_goal: 20 * 3600_000,
  move_reminder: 55 * 60_000,
  load_jump: 7 * 86_400_000,
  recovery_day: 2 * 86_400_000,
}

export interface DeliveryReport {
  delivered: RecommendationPayload[]
  redelivered: RecommendationPayload[]
  suppressed: { userId: string; rule: RuleId; reason: SuppressReason }[]
}

interface Sent {
  id: string
  rule: string
  priority: string
  localDay: string
  deliveredAt: number
  payload: RecommendationPayload
}

export class Delivery {
  constructor(
    private readonly db: Queryable,
    private readonly consent: ConsentGate,
    private readonly prefs: PreferencesReader,
    private readonly publisher: Publisher,
    private readonly metrics: InsightsMetrics,
    private readonly settings: DeliverySettings,
    private readonly log: Logger,
    /** the user's zone for quiet hours when preferences hold none (users.time_zone) */
    private readonly zoneOf: (userId: string) => string,
  ) {}

  /** Consent and preferences of these users must be loaded (ConsentGate.load, PreferencesService.load). */
  async deliver(candidates: readonly Candidate[], at: number): Promise<DeliveryReport> {
    const report: DeliveryReport = { delivered: [], redelivered: [], suppressed: [] }
    if (candidates.length === 0) return report
    const users = [...new Set(candidates.map((c) => c.userId))]
    const sent = await this.recent(users, at)
    const byUser = new Map<string, Candidate[]>()
    for (const c of candidates) {
      const list = byUser.get(c.userId) ?? []
      list.push(c)
      byUser.set(c.userId, list)
    }
    const fresh: { c: Candidate; p: RecommendationPayload }[] = []
    const suppress = (c: Candidate, reason: SuppressReason) => {
      report.suppressed.push({ userId: c.userId, rule: c.rule, reason })
      this.metrics.suppressed.inc({ rule: c.rule, reason })
    }
    for (const [userId, list] of byUser) {
      list.sort((a, b) => PRIORITY_RANK[a.priority] - PRIORITY_RANK[b.priority] || a.rule.localeCompare(b.rule))
      const prefs = this.prefs.get(userId)
      const mine = sent.get(userId) ?? []
      const tz = safeZone(prefs.timeZone ?? this.zoneOf(userId))
      const lp = localParts(at, tz)
      const quiet =
        prefs.quietHours !== undefined &&
        inWindow(lp.hour * 60 + lp.minute, hhmm(prefs.quietHours.start), hhmm(prefs.quietHours.end))
      const accepted: Candidate[] = []
      for (const c of list) {
        const p = buildPayload(c)
        if (!this.consent.allows(userId, 'recommendations')) {
          suppress(c, 'consent')
          continue
        }
        if (prefs.mutedRules.includes(c.rule)) {
          suppress(c, 'muted')
          continue
        }
        const before = mine.find((s) => s.id === p.id)
        if (before) {
          // At-least-once: the same recommendation again, with the id the app already knows.
          if (Date.parse(before.payload.expiresAt) > at) report.redelivered.push(before.payload)
          continue
        }
        if (c.expiresAt <= at) {
          suppress(c, 'expired')
          continue
        }
        if (c.priority !== 'safety' && quiet) {
          suppress(c, 'quiet_hours')
          continue
        }
        const today = (s: { localDay: string }) => s.localDay === c.localDay
        if (
          (c.priority === 'goal' || c.priority === 'nudge') &&
          (mine.some((s) => today(s) && s.priority === 'recovery') ||
            accepted.some((a) => today(a) && a.priority === 'recovery'))
        ) {
          suppress(c, 'recovery_day')
          continue
        }
        const cooldown = this.settings.cooldownMs[c.rule] ?? 0
        if (cooldown > 0 && mine.some((s) => s.rule === c.rule && at - s.deliveredAt < cooldown)) {
          suppress(c, 'cooldown')
          continue
        }
        if (c.priority !== 'safety') {
          const used =
            mine.filter((s) => today(s) && s.priority !== 'safety').length +
            accepted.filter((a) => today(a) && a.priority !== 'safety').length
          if (used >= this.settings.dailyBudget) {
            suppress(c, 'budget')
            continue
          }
        }
        accepted.push(c)
        fresh.push({ c, p })
      }
    }
    if (fresh.length > 0) {
      // Stored before it is published: a published recommendation is always one delta sync can return.
      const res = await this.db.query<{ id: string }>(
        `INSERT INTO recommendations (id, user_id, rule, version, priority, local_day, created_at, expires_at, payload, delivered_at)
         SELECT x.id, x.user_id, x.rule, x.version, x.priority, x.local_day, x.created_at, x.expires_at, x.payload, $10::timestamptz
         FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::date[], $7::timestamptz[],
                     $8::timestamptz[], $9::jsonb[]) AS x(id, user_id, rule, version, priority, local_day, created_at, expires_at, payload)
         ON CONFLICT (id) DO NOTHING RETURNING id`,
        [
          fresh.map((f) => f.p.id),
          fresh.map((f) => f.c.userId),
          fresh.map((f) => f.c.rule),
          fresh.map((f) => f.c.version),
          fresh.map((f) => f.c.priority),
          fresh.map((f) => f.c.localDay),
          fresh.map((f) => f.p.createdAt),
          fresh.map((f) => f.p.expiresAt),
          fresh.map((f) => JSON.stringify(f.p)),
          new Date(at).toISOString(),
        ],
      )
      const inserted = new Set(res.rows.map((r) => r.id))
      for (const f of fresh) {
        // Another process stored it first (two brokers): it is theirs to publish.
        if (!inserted.has(f.p.id)) continue
        report.delivered.push(f.p)
        this.publish(f.c.userId, f.p)
        this.metrics.delivered.inc({ rule: f.c.rule, kind: 'new' })
      }
    }
    for (const p of report.redelivered) {
      const userId = candidates.find((c) => buildPayload(c).id === p.id)?.userId
      if (!userId) continue
      this.publish(userId, p)
      this.metrics.delivered.inc({ rule: p.rule, kind: 'redelivery' })
    }
    if (report.delivered.length > 0)
      this.log.debug({ delivered: report.delivered.length, suppressed: report.suppressed.length }, 'recommendations')
    return report
  }

  private publish(userId: string, p: RecommendationPayload): void {
    this.publisher.publish(topicFor.recommendations(userId), JSON.stringify(p), 1, false)
  }

  /** What was sent to these users in the last 8 days: enough for every cooldown, the budget and redeliveries. */
  private async recent(users: readonly string[], at: number): Promise<Map<string, Sent[]>> {
    const res = await this.db.query<{
      id: string
      user_id: string
      rule: string
      priority: string
      local_day: string
      delivered: number
      payload: unknown
    }>(
      `SELECT id, user_id, rule, priority, to_char(local_day, 'YYYY-MM-DD') AS local_day,
              (extract(epoch FROM delivered_at) * 1000)::float8 AS delivered, payload
       FROM recommendations WHERE user_id = ANY($1::text[]) AND delivered_at >= $2::timestamptz - interval '8 days'`,
      [users, new Date(at).toISOString()],
    )
    const out = new Map<string, Sent[]>()
    for (const r of res.rows) {
      const list = out.get(r.user_id) ?? []
      list.push({
        id: r.id,
        rule: r.rule,
        priority: r.priority,
        localDay: r.local_day,
        deliveredAt: Number(r.delivered),
        payload: (typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload) as RecommendationPayload,
      })
      out.set(r.user_id, list)
    }
    return out
  }
}

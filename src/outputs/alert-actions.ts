// Race control's alert queue (the console, src/transport/console-routes.ts): an event's recent alerts as medics may
// see them, and a medic's acknowledge / resolve. An action is audited first (no action happens unaudited), then
// persisted (alert_actions, migration 0017; resolve also closes the episode's row), then published on
// `events/{eid}/alerts` as the alert with an `action` (payloads.ts AlertActionMessage), so every console of the
// event sees it. The same consent and privacy-zone rules as the engine's medic copies apply (episodes.ts).
import type { AuditActor, AuditSink } from '../ops/audit-types.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Queryable } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import type { ConsentGate } from './consent-gate.js'
import type { AlertActionMessage, AlertKind, AlertMessage, Severity } from './payloads.js'
import type { ZoneGate } from './zone-gate.js'

export type AlertAction = 'acknowledge' | 'resolve'

/** How far back the queue reaches: a race day. */
export const QUEUE_WINDOW_MS = 24 * 3600_000
/** alerts per listing, newest first */
export const QUEUE_MAX = 1000

export class AlertActionError extends Error {
  constructor(
    readonly status: 403 | 404 | 409,
    message: string,
  ) {
    super(message)
  }
}

interface Row {
  id: string
  user_id: string
  device_id: string
  event_id: string | null
  kind: string
  severity: string
  opened_at: number
  resolved_at: number | null
  evidence: unknown
  acked_at: number | null
  acked_by: string | null
  closed_at: number | null
  closed_by: string | null
}

const SELECT = `SELECT a.id, a.user_id, a.device_id, a.event_id, a.kind, a.severity,
    (extract(epoch FROM a.opened_at) * 1000)::float8 AS opened_at,
    (extract(epoch FROM a.resolved_at) * 1000)::float8 AS resolved_at, a.evidence,
    (SELECT (extract(epoch FROM x.at) * 1000)::float8 FROM alert_actions x
      WHERE x.alert_id = a.id AND x.action = 'acknowledge' ORDER BY x.at LIMIT 1) AS acked_at,
    (SELECT x.actor_id FROM alert_actions x
      WHERE x.alert_id = a.id AND x.action = 'acknowledge' ORDER BY x.at LIMIT 1) AS acked_by,
    (SELECT (extract(epoch FROM x.at) * 1000)::float8 FROM alert_actions x
      WHERE x.alert_id = a.id AND x.action = 'resolve' ORDER BY x.at LIMIT 1) AS closed_at,
    (SELECT x.actor_id FROM alert_actions x
      WHERE x.alert_id = a.id AND x.action = 'resolve' ORDER BY x.at LIMIT 1) AS closed_by
  FROM alerts a`

const num = (v: number | null): number | null => (v === null ? null : Number(v))

export class AlertActions {
  constructor(
    private readonly db: Queryable,
    private readonly publisher: Publisher,
    private readonly consent: Pick<ConsentGate, 'allows' | 'load'>,
    private readonly zones: Pick<ZoneGate, 'withheld' | 'load'>,
    private readonly audit: AuditSink,
  ) {}

  /** The event's alerts of the last QUEUE_WINDOW_MS that its medics may see, newest first. */
  async list(eventId: string, now = Date.now()): Promise<AlertActionMessage[]> {
    const res = await this.db.query<Row>(
      `${SELECT} WHERE a.event_id = $1 AND a.opened_at > to_timestamp($2 / 1000.0) ORDER BY a.opened_at DESC LIMIT $3`,
      [eventId, now - QUEUE_WINDOW_MS, QUEUE_MAX],
    )
    const users = [...new Set(res.rows.map((r) => r.user_id))]
    await Promise.all([this.consent.load(users), this.zones.load(users)])
    return res.rows.flatMap((r) => {
      const m = this.forMedics(r)
      return m ? [m] : []
    })
  }

  /**
   * A medic's action on one alert of one of `events` (null: any, an admin). Once per action (a unique index): a
   * second acknowledge of the same alert records and publishes nothing (409), even when both arrive at once.
   */
  async act(
    alertId: string,
    action: AlertAction,
    actor: AuditActor,
    events: readonly string[] | null,
    note: string | null,
  ): Promise<AlertActionMessage> {
    const row = await this.row(alertId)
    if (!row?.event_id) throw new AlertActionError(404, 'no such event alert')
    if (events && !events.includes(row.event_id)) throw new AlertActionError(403, 'not your event')
    await this.consent.load([row.user_id])
    // A runner who withdrew medical_alerts is not in the medics' queue: nothing to act on.
    if (!this.consent.allows(row.user_id, 'medical_alerts')) throw new AlertActionError(404, 'no such event alert')
    if ((action === 'acknowledge' ? row.acked_at : row.closed_at) !== null)
      throw new AlertActionError(409, `already ${action === 'acknowledge' ? 'acknowledged' : 'resolved'}`)
    // Audited before it is done, as every /admin/rpc call.
    await this.audit.record({
      actor,
      action: `alert.${action}`,
      subject: row.user_id,
      purpose: 'medical_alerts',
      details: { alertId, eventId: row.event_id, kind: row.kind },
    })
    const inserted = await this.db.query(
      `INSERT INTO alert_actions (alert_id, action, actor_role, actor_id, note) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (alert_id, action) DO NOTHING`,
      [alertId, action, actor.role, actor.id, note],
    )
    // Another medic's same action won the race (the audit row records this attempt all the same).
    if (inserted.rowCount === 0)
      throw new AlertActionError(409, `already ${action === 'acknowledge' ? 'acknowledged' : 'resolved'}`)
    // The medic closes the case; the episode's own row is closed too unless the rules closed it already.
    if (action === 'resolve')
      await this.db.query('UPDATE alerts SET resolved_at = now() WHERE id = $1 AND resolved_at IS NULL', [alertId])
    const after = await this.row(alertId)
    if (!after) throw new AlertActionError(404, 'no such event alert') // erased meanwhile
    await this.zones.load([after.user_id])
    const msg = this.forMedics(after, action, actor.id)
    if (!msg) throw new AlertActionError(404, 'no such event alert')
    this.publisher.publish(topicFor.eventAlerts(row.event_id), JSON.stringify(msg), 1, false)
    return msg
  }

  private async row(alertId: string): Promise<Row | null> {
    const res = await this.db.query<Row>(`${SELECT} WHERE a.id = $1`, [alertId])
    return res.rows[0] ?? null
  }

  /**
   * The medics' view of a row, or null when the runner withdrew `medical_alerts`. The position is left out when it
   * lies in one of the runner's zones and the alert is closed (an open alert shows it: vital interest, as the feed).
   */
  private forMedics(r: Row, action?: AlertAction, by?: string | null): AlertActionMessage | null {
    if (!this.consent.allows(r.user_id, 'medical_alerts')) return null
    const raw = (typeof r.evidence === 'string' ? JSON.parse(r.evidence) : r.evidence) as Record<string, unknown>
    const evidence = { t: Number(r.opened_at), ...raw } as AlertMessage['evidence']
    const resolvedAt = num(r.resolved_at)
    const { lat, lon } = evidence
    if (resolvedAt !== null && typeof lat === 'number' && typeof lon === 'number') {
      if (this.zones.withheld(r.user_id, lat, lon)) {
        delete evidence.lat
        delete evidence.lon
      }
    }
    const ackAt = num(r.acked_at)
    const closedAt = num(r.closed_at)
    return {
      id: r.id,
      kind: r.kind as AlertKind,
      severity: r.severity as Severity,
      state: resolvedAt === null ? 'opened' : 'resolved',
      userId: r.user_id,
      deviceId: r.device_id,
      eventId: r.event_id,
      openedAt: Number(r.opened_at),
      resolvedAt,
      evidence,
      acknowledged: ackAt === null ? null : { at: ackAt, by: r.acked_by },
      closed: closedAt === null ? null : { at: closedAt, by: r.closed_by },
      ...(action ? { action: { action, by: by ?? null, at: Date.now() } } : {}),
    }
  }
}

// Delta sync: an app publishes {cursor, kinds, limit, resolution} to users/{uid}/sync/request and receives on
// users/{uid}/sync/response the readings/alerts after the cursor, a page at a time, from the database. Long ranges
// can ask for per-minute or per-hour rollups (continuous aggregates on TimescaleDB, computed on plain PostgreSQL).
import { z } from 'zod'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'

const cursor = z.number().finite().min(0)
export const syncRequestSchema = z.object({
  requestId: z.string().max(100).optional(),
  /** epoch ms, exclusive; per kind. Readings are ordered by sample time, alerts by their last change. */
  cursor: z
    .object({ readings: cursor.optional(), alerts: cursor.optional(), recommendations: cursor.optional() })
    .default({}),
  /** recommendations (src/insights) are returned when asked for, ordered by delivery time */
  kinds: z
    .array(z.enum(['readings', 'alerts', 'recommendations']))
    .min(1)
    .default(['readings', 'alerts']),
  limit: z.number().int().min(1).max(5000).default(500),
  resolution: z.enum(['raw', '1m', '1h']).default('raw'),
})
export type SyncRequest = z.infer<typeof syncRequestSchema>

const METRIC_NAMES: Record<number, string> = {
  1: 'hr',
  2: 'spo2',
  3: 'steps',
  4: 'cadence',
  5: 'skin_temp',
  6: 'resp',
  7: 'distance',
}

export class SyncService {
  constructor(
    private readonly db: Db,
    private readonly publisher: Publisher,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly timescale: () => boolean,
  ) {}

  async handle(userId: string, payload: Buffer): Promise<void> {
    let req: SyncRequest
    try {
      req = syncRequestSchema.parse(JSON.parse(payload.toString('utf8') || '{}'))
    } catch (err) {
      this.metrics.syncRequests.inc({ outcome: 'bad_request' })
      this.publisher.publish(
        topicFor.syncResponse(userId),
        JSON.stringify({ error: 'bad_request', detail: (err as Error).message.slice(0, 300) }),
        1,
        false,
      )
      return
    }
    try {
      const body = await this.query(userId, req)
      this.publisher.publish(topicFor.syncResponse(userId), JSON.stringify(body), 1, false)
      this.metrics.syncRequests.inc({ outcome: 'ok' })
    } catch (err) {
      this.metrics.syncRequests.inc({ outcome: 'error' })
      this.log.warn({ err: (err as Error).message }, 'sync request failed')
      this.publisher.publish(
        topicFor.syncResponse(userId),
        JSON.stringify({ requestId: req.requestId ?? null, error: 'unavailable' }),
        1,
        false,
      )
    }
  }

  /** One page of the user's data after the cursor (the response body); also race control's runner detail. */
  async query(userId: string, req: SyncRequest): Promise<Record<string, unknown>> {
    const body: Record<string, unknown> = { requestId: req.requestId ?? null }
    const next: Record<string, number> = {}
    let more = false
    if (req.kinds.includes('readings')) {
      const r = await this.readings(userId, req)
      body['readings'] = r.rows
      next['readings'] = r.next
      more ||= r.more
    }
    if (req.kinds.includes('alerts')) {
      const a = await this.alerts(userId, req)
      body['alerts'] = a.rows
      next['alerts'] = a.next
      more ||= a.more
    }
    if (req.kinds.includes('recommendations')) {
      const r = await this.recommendations(userId, req)
      body['recommendations'] = r.rows
      next['recommendations'] = r.next
      more ||= r.more
    }
    body['nextCursor'] = next
    body['more'] = more
    return body
  }

  private async readings(userId: string, req: SyncRequest) {
    const from = req.cursor.readings ?? 0
    let sql: string
    if (req.resolution === 'raw') {
      sql = `SELECT (extract(epoch FROM s.time) * 1000)::float8 AS t, d.device_id AS device, s.metric::int AS metric, s.value
             FROM samples s JOIN devices d USING (device_key)
             WHERE d.user_id = $1 AND s.time > to_timestamp($2 / 1000.0) ORDER BY s.time, d.device_id, s.metric LIMIT $3`
    } else if (this.timescale()) {
      const view = req.resolution === '1m' ? 'samples_1m' : 'samples_1h'
      sql = `SELECT (extract(epoch FROM a.bucket) * 1000)::float8 AS t, d.device_id AS device, a.metric::int AS metric,
               a.avg AS value, a.min, a.max, a.sum, a.n::int AS n
             FROM ${view} a JOIN devices d USING (device_key)
             WHERE d.user_id = $1 AND a.bucket > to_timestamp($2 / 1000.0) ORDER BY a.bucket, d.device_id, a.metric LIMIT $3`
    } else {
      const unit = req.resolution === '1m' ? 'minute' : 'hour'
      sql = `SELECT (extract(epoch FROM date_trunc('${unit}', s.time)) * 1000)::float8 AS t, d.device_id AS device, s.metric::int AS metric,
               avg(s.value) AS value, min(s.value) AS min, max(s.value) AS max, sum(s.value) AS sum, count(*)::int AS n
             FROM samples s JOIN devices d USING (device_key)
             WHERE d.user_id = $1 AND s.metric IN (1, 3, 7) AND date_trunc('${unit}', s.time) > to_timestamp($2 / 1000.0)
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT $3`
    }
    const res = await this.db.query<{ t: number; device: string; metric: number; value: number }>(sql, [
      userId,
      from,
      req.limit + 1,
    ])
    const more = res.rows.length > req.limit
    // A page never splits one timestamp: the next page starts strictly after the last full timestamp.
    let rows = res.rows.slice(0, req.limit)
    if (more && rows.length > 0) {
      const lastT = Number((rows[rows.length - 1] as { t: number }).t)
      const cut = rows.filter((r) => Number(r.t) < lastT)
      if (cut.length > 0) rows = cut
    }
    const next = rows.length > 0 ? Number((rows[rows.length - 1] as { t: number }).t) : from
    return {
      rows: rows.map((r) => ({ ...r, t: Number(r.t), metric: METRIC_NAMES[Number(r.metric)] ?? String(r.metric) })),
      next,
      more,
    }
  }

  private async alerts(userId: string, req: SyncRequest) {
    const from = req.cursor.alerts ?? 0
    const res = await this.db.query<{
      id: string
      kind: string
      severity: string
      event_id: string | null
      device_id: string
      opened_at: number
      resolved_at: number | null
      changed: number
      evidence: unknown
    }>(
      `SELECT id, kind, severity, event_id, device_id,
              (extract(epoch FROM opened_at) * 1000)::float8 AS opened_at,
              (extract(epoch FROM resolved_at) * 1000)::float8 AS resolved_at,
              (extract(epoch FROM coalesce(resolved_at, opened_at)) * 1000)::float8 AS changed, evidence
       FROM alerts WHERE user_id = $1 AND coalesce(resolved_at, opened_at) > to_timestamp($2 / 1000.0)
       ORDER BY coalesce(resolved_at, opened_at), id LIMIT $3`,
      [userId, from, req.limit + 1],
    )
    const more = res.rows.length > req.limit
    const rows = res.rows.slice(0, req.limit).map((r) => ({
      id: r.id,
      kind: r.kind,
      severity: r.severity,
      eventId: r.event_id,
      deviceId: r.device_id,
      state: r.resolved_at === null ? 'opened' : 'resolved',
      openedAt: Number(r.opened_at),
      resolvedAt: r.resolved_at === null ? null : Number(r.resolved_at),
      changedAt: Number(r.changed),
      evidence: typeof r.evidence === 'string' ? (JSON.parse(r.evidence) as unknown) : r.evidence,
    }))
    const next = rows.length > 0 ? (rows[rows.length - 1] as { changedAt: number }).changedAt : from
    return { rows, next, more }
  }

  private async recommendations(userId: string, req: SyncRequest) {
    const from = req.cursor.recommendations ?? 0
    const res = await this.db.query<{ payload: unknown; t: number }>(
      `SELECT payload, (extract(epoch FROM delivered_at) * 1000)::float8 AS t FROM recommendations
       WHERE user_id = $1 AND delivered_at > to_timestamp($2 / 1000.0) ORDER BY delivered_at, id LIMIT $3`,
      [userId, from, req.limit + 1],
    )
    const more = res.rows.length > req.limit
    let rows = res.rows.slice(0, req.limit)
    // One delivery round shares a timestamp: a page never splits it (the cursor is exclusive).
    if (more && rows.length > 0) {
      const lastT = Number((rows[rows.length - 1] as { t: number }).t)
      const cut = rows.filter((r) => Number(r.t) < lastT)
      if (cut.length > 0) rows = cut
    }
    const next = rows.length > 0 ? Number((rows[rows.length - 1] as { t: number }).t) : from
    return {
      rows: rows.map((r) => (typeof r.payload === 'string' ? (JSON.parse(r.payload) as unknown) : r.payload)),
      next,
      more,
    }
  }
}

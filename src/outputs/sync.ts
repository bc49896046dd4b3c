// Delta sync: an app publishes {cursor, kinds, limit, resolution} to users/{uid}/sync/request and receives on
// users/{uid}/sync/response what changed after the cursor, a page at a time, from the database.
//
// The cursor is a string (docs/contract.md "Delta sync"): a position in commit order over readings, alerts,
// recommendations and consent changes (sync-order.ts), "0" to start. It converges: late uploads, resolved alerts and
// new consent rows all come after the cursor an app holds. The older per-kind time cursors ({readings: epoch ms, …})
// keep working for existing apps and for rollups (per-minute or per-hour: continuous aggregates on TimescaleDB,
// computed on plain PostgreSQL), but they miss rows whose sample time is older than the cursor when they arrive.
import { z } from 'zod'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import { BadCursorError, decodeCursor, encodeCursor, type OrderedRow, pageAfter, SYNC_KINDS } from './sync-order.js'

const timeCursor = z.number().finite().min(0)
export const syncRequestSchema = z.object({
  requestId: z.string().max(100).optional(),
  /**
   * A commit-order cursor: "0" at first, then the nextCursor of the last response. Or (legacy) epoch ms, exclusive,
   * per kind: readings ordered by sample time, alerts by their last change, recommendations by delivery time.
   */
  cursor: z
    .union([
      z.string().max(400),
      z.object({
        readings: timeCursor.optional(),
        alerts: timeCursor.optional(),
        recommendations: timeCursor.optional(),
      }),
    ])
    .default({}),
  /** default: all four with a commit-order cursor, readings and alerts with time cursors (consents need the former) */
  kinds: z.array(z.enum(SYNC_KINDS)).min(1).optional(),
  limit: z.number().int().min(1).max(5000).default(500),
  resolution: z.enum(['raw', '1m', '1h']).default('raw'),
})
export type SyncRequest = z.infer<typeof syncRequestSchema>
type TimeRequest = SyncRequest & { cursor: Exclude<SyncRequest['cursor'], string>; kinds: SyncRequest['kinds'] & {} }

/** One reading in a commit-order response; `id` is its identity (device, metric, time): a re-sent row has the same. */
export const syncReadingSchema = z.object({
  id: z.string(),
  t: z.number(),
  device: z.string(),
  metric: z.string(),
  value: z.number(),
})
export const syncAlertSchema = z.object({
  id: z.string(),
  kind: z.string(),
  severity: z.string(),
  eventId: z.string().nullable(),
  deviceId: z.string(),
  state: z.enum(['opened', 'resolved']),
  openedAt: z.number(),
  resolvedAt: z.number().nullable(),
  changedAt: z.number(),
  evidence: z.unknown(),
})
export const syncConsentSchema = z.object({
  id: z.string(),
  purpose: z.string(),
  eventId: z.string().nullable(),
  granted: z.boolean(),
  version: z.number(),
  source: z.string(),
  at: z.number(),
})
/** A response to a commit-order request (or an error: {requestId, error, detail?}). */
export const syncResponseSchema = z.object({
  requestId: z.string().nullable(),
  readings: z.array(syncReadingSchema).optional(),
  alerts: z.array(syncAlertSchema).optional(),
  recommendations: z.array(z.unknown()).optional(),
  consents: z.array(syncConsentSchema).optional(),
  nextCursor: z.string(),
  more: z.boolean(),
})
export type SyncResponse = z.infer<typeof syncResponseSchema>

/** A reading's identity on the wire: device, metric name, sample time in microseconds (what the database keeps). */
export function readingId(deviceId: string, metricCode: number, timeUs: bigint | string): string {
  return `${deviceId}/${METRIC_NAMES[metricCode] ?? String(metricCode)}/${timeUs}`
}

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
    if (typeof req.cursor === 'string') {
      await this.handleOrdered(userId, req, req.cursor)
      return
    }
    const treq: TimeRequest = { ...req, cursor: req.cursor, kinds: req.kinds ?? ['readings', 'alerts'] }
    if (treq.kinds.includes('consents')) {
      this.refuse(userId, req, 'bad_request', 'consents are synced with a commit-order cursor only (send cursor "0")')
      return
    }
    await this.respond(userId, req, () => this.query(userId, treq))
  }

  /** Publishes the page `build` makes, or `unavailable` when the database fails (the app retries). */
  private async respond(userId: string, req: SyncRequest, build: () => Promise<unknown>): Promise<void> {
    try {
      const body = await build()
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
  async query(userId: string, req: TimeRequest): Promise<Record<string, unknown>> {
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

  private refuse(userId: string, req: SyncRequest, error: string, detail: string): void {
    this.metrics.syncRequests.inc({ outcome: error })
    this.publisher.publish(
      topicFor.syncResponse(userId),
      JSON.stringify({ requestId: req.requestId ?? null, error, detail }),
      1,
      false,
    )
  }

  /** A commit-order page: every kind asked for, in one order, and one cursor for all of them. */
  private async handleOrdered(userId: string, req: SyncRequest, cursor: string): Promise<void> {
    if (req.resolution !== 'raw') {
      this.refuse(userId, req, 'bad_request', 'rollups (1m, 1h) are served with time cursors only')
      return
    }
    let from: ReturnType<typeof decodeCursor>
    try {
      from = decodeCursor(cursor)
    } catch (err) {
      if (!(err instanceof BadCursorError)) throw err
      this.refuse(userId, req, 'bad_cursor', err.message)
      return
    }
    const kinds = req.kinds ?? SYNC_KINDS
    await this.respond(userId, req, async () => {
      const page = await pageAfter(this.db, userId, kinds, from, req.limit)
      const body: Record<string, unknown> = { requestId: req.requestId ?? null }
      for (const k of kinds) body[k] = []
      for (const r of page.rows) (body[r.kind] as unknown[]).push(orderedRow(r))
      body['nextCursor'] = encodeCursor(page.next)
      body['more'] = page.more
      return body
    })
  }

  private async readings(userId: string, req: TimeRequest) {
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
    const { rows, next, more } = timePage(res.rows, req.limit, from)
    return {
      rows: rows.map((r) => ({ ...r, t: Number(r.t), metric: METRIC_NAMES[Number(r.metric)] ?? String(r.metric) })),
      next,
      more,
    }
  }

  private async alerts(userId: string, req: TimeRequest) {
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

  private async recommendations(userId: string, req: TimeRequest) {
    const from = req.cursor.recommendations ?? 0
    const res = await this.db.query<{ payload: unknown; t: number }>(
      `SELECT payload, (extract(epoch FROM delivered_at) * 1000)::float8 AS t FROM recommendations
       WHERE user_id = $1 AND delivered_at > to_timestamp($2 / 1000.0) ORDER BY delivered_at, id LIMIT $3`,
      [userId, from, req.limit + 1],
    )
    // One delivery round shares a timestamp: timePage never splits it.
    const { rows, next, more } = timePage(res.rows, req.limit, from)
    return {
      rows: rows.map((r) => (typeof r.payload === 'string' ? (JSON.parse(r.payload) as unknown) : r.payload)),
      next,
      more,
    }
  }
}

const json = (v: unknown): unknown => (typeof v === 'string' ? (JSON.parse(v) as unknown) : v)

/** A row of a commit-order page in its wire shape (the schemas above). */
function orderedRow(o: OrderedRow): unknown {
  const r = o.row
  switch (o.kind) {
    case 'readings': {
      const us = BigInt(String(r['k2']))
      const metric = METRIC_NAMES[Number(r['k1'])] ?? String(r['k1'])
      return {
        id: readingId(String(r['device']), Number(r['k1']), us),
        t: Number(us) / 1000,
        device: String(r['device']),
        metric,
        value: Number(r['value']),
      }
    }
    case 'alerts':
      return {
        id: String(r['k0']),
        kind: r['kind'],
        severity: r['severity'],
        eventId: r['event_id'] ?? null,
        deviceId: r['device_id'],
        state: r['resolved_at'] === null ? 'opened' : 'resolved',
        openedAt: Number(r['opened_at']),
        resolvedAt: r['resolved_at'] === null ? null : Number(r['resolved_at']),
        changedAt: Number(r['resolved_at'] ?? r['opened_at']),
        evidence: json(r['evidence']),
      }
    case 'recommendations':
      return json(r['payload'])
    case 'consents':
      return {
        id: String(r['k0']),
        purpose: r['purpose'],
        eventId: r['event_id'] ?? null,
        granted: r['granted'],
        version: Number(r['version']),
        source: r['source'],
        at: Number(r['at']),
      }
  }
}

/**
 * One page of a time-cursor query that fetched `limit + 1` rows ordered by `t`: a page never splits one timestamp
 * (the cursor is exclusive), so when there is more, the rows of the last timestamp wait for the next page — unless
 * the whole page is that one timestamp. `next` is the cursor to send back.
 */
function timePage<R extends { t: number }>(all: R[], limit: number, from: number) {
  const more = all.length > limit
  let rows = all.slice(0, limit)
  if (more && rows.length > 0) {
    const lastT = Number((rows[rows.length - 1] as R).t)
    const cut = rows.filter((r) => Number(r.t) < lastT)
    if (cut.length > 0) rows = cut
  }
  const next = rows.length > 0 ? Number((rows[rows.length - 1] as R).t) : from
  return { rows, next, more }
}

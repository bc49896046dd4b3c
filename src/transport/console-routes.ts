// The race-control console (issue #15 item 2; README "Race-control console", docs/outputs.md "Race control"):
//   GET  /                                  the page (static/console/, served from the source tree, no CDN)
//   GET  /console/app.js, /console/app.css  its script and style; /assets/mqtt.min.js: MQTT.js's browser bundle
//   GET  /console/config                    tile layer settings (none by default: the map works offline)
//   GET  /console/api/alerts?event=         the event's alert queue (medic of the event, or admin)
//   POST /console/api/alerts/{id}/{acknowledge|resolve}   a medic's action: audited, persisted, published
//   POST /console/api/runner                one runner's HR and distance by delta sync (SyncService.query), audited
// Live data (positions, leaderboard, alerts) comes over MQTT/WebSocket with the same token: the broker's own ACL and
// the feeds' consent and zone gates apply, the console adds no way around them.
import fs from 'node:fs'
import type http from 'node:http'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Counter, type Registry } from 'prom-client'
import { z } from 'zod'
import type { BrokerConfig } from '../../broker.config.js'
import type { Principal } from '../identity/principal.js'
import type { Tokens } from '../identity/tokens.js'
import type { Logger } from '../log.js'
import type { AuditActor, AuditSink } from '../ops/audit-types.js'
import { AlertActionError, AlertActions } from '../outputs/alert-actions.js'
import type { ConsentGate } from '../outputs/consent-gate.js'
import { type SyncRequest, syncRequestSchema } from '../outputs/sync.js'
import type { ZoneGate } from '../outputs/zone-gate.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import { isValidId } from '../topics/grammar.js'
import { readBody } from './http-body.js'

/** What the broker hands the console (src/broker.ts). */
export interface ConsoleServices {
  sync: { query(userId: string, req: SyncRequest): Promise<Record<string, unknown>> }
  zones: ZoneGate
  publish: Publisher['publish']
}

export interface ConsoleDeps {
  config: BrokerConfig
  db: Db
  tokens: Tokens
  registry: { isParticipant(eventId: string, userId: string): Promise<boolean> }
  consent: () => Promise<Pick<ConsentGate, 'allows' | 'load'>>
  audit: AuditSink
  services: ConsoleServices
  metricsRegistry: Registry
  log: Logger
}

/** The runner detail reaches back this far: the race, not the runner's life (data minimisation). */
export const RUNNER_HISTORY_MS = 6 * 3600_000
/** metrics the detail shows; the rest of the runner's readings stay out of the console */
const DETAIL_METRICS = new Set(['hr', 'distance'])

const runnerRequest = z.object({
  eventId: z.string().refine(isValidId),
  userId: z.string().refine(isValidId),
  cursor: z.number().finite().min(0).default(0),
  limit: z.number().int().min(1).max(5000).default(2000),
})
const actionBody = z.object({ note: z.string().max(500).optional() }).default({})

const here = path.dirname(fileURLToPath(import.meta.url))
const STATIC: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/console/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
}
const fileCache = new Map<string, string>()
/** From the source tree next to this file (built: dist/… has static/ copied beside it, Dockerfile). */
function staticFile(name: string): string | null {
  const hit = fileCache.get(name)
  if (hit !== undefined) return hit
  const file = [
    path.join(here, 'static', 'console', name),
    path.join(here, '../../../src/transport/static/console', name),
  ].find((f) => fs.existsSync(f))
  if (!file) return null
  const text = fs.readFileSync(file, 'utf8')
  fileCache.set(name, text)
  return text
}
let bundle: string | null = null
function mqttBrowserBundle(): string {
  bundle ??= fs.readFileSync(createRequire(import.meta.url).resolve('mqtt/dist/mqtt.min'), 'utf8')
  return bundle
}

function send(res: http.ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
  res.end(typeof body === 'string' ? body : JSON.stringify(body))
}

async function readJson(req: http.IncomingMessage, max = 16 * 1024): Promise<unknown> {
  const text = await readBody(req, max)
  return text ? (JSON.parse(text) as unknown) : {}
}

/** The console's routes; returns a handler that answers true when it took the request. */
export function createConsoleRoutes(deps: ConsoleDeps) {
  const requests = new Counter({
    name: 'pulsegate_console_requests_total',
    help: 'race-control console API requests by route and outcome',
    labelNames: ['route', 'outcome'],
    registers: [deps.metricsRegistry],
  })
  let actions: Promise<AlertActions> | null = null
  const alertActions = (): Promise<AlertActions> => {
    actions ??= deps.consent().then(
      (consent) =>
        new AlertActions(deps.db, { publish: deps.services.publish }, consent, deps.services.zones, deps.audit),
      (err: unknown) => {
        actions = null
        throw err
      },
    )
    return actions
  }

  /** A medic or admin token; a medic may act on their token's events only. */
  async function staff(req: http.IncomingMessage, res: http.ServerResponse, route: string): Promise<Principal | null> {
    const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]
    const refuse = (status: number, error: string) => {
      requests.inc({ route, outcome: status === 401 ? 'unauthenticated' : 'forbidden' })
      send(res, status, { error })
      return null
    }
    if (!bearer) return refuse(401, 'medic or admin token required')
    try {
      const p = await deps.tokens.verify(bearer)
      if (p.role !== 'medic' && p.role !== 'admin') return refuse(403, 'medic or admin role required')
      return p
    } catch (err) {
      return refuse(401, (err as Error).message)
    }
  }
  const mayWatch = (p: Principal, eventId: string) => p.role === 'admin' || p.events.includes(eventId)
  const actorOf = (p: Principal): AuditActor => ({ role: p.role, id: p.userId })
  const bad = (res: http.ServerResponse, route: string, message: string) => {
    requests.inc({ route, outcome: 'bad_request' })
    send(res, 400, { error: message })
  }
  const issues = (e: z.ZodError) => e.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ')

  async function runner(req: http.IncomingMessage, res: http.ServerResponse, p: Principal): Promise<void> {
    let body: unknown
    try {
      body = await readJson(req)
    } catch (err) {
      return bad(res, 'runner', `invalid JSON: ${(err as Error).message}`)
    }
    const parsed = runnerRequest.safeParse(body)
    if (!parsed.success) return bad(res, 'runner', issues(parsed.error))
    const { eventId, userId, limit } = parsed.data
    if (!mayWatch(p, eventId)) {
      requests.inc({ route: 'runner', outcome: 'forbidden' })
      return send(res, 403, { error: 'not your event' })
    }
    // Whom medics may look at: the event's runners who share their live data, or whose alert is open now (the same
    // vital-interest exception as the positions feed). Anyone else is "not found", never "forbidden" (no probing).
    const consent = await deps.consent()
    await consent.load([userId])
    const participant = await deps.registry.isParticipant(eventId, userId)
    let purpose: 'live_sharing' | 'medical_alerts' | null = null
    if (participant && consent.allows(userId, 'live_sharing')) purpose = 'live_sharing'
    else if (participant && consent.allows(userId, 'medical_alerts')) {
      const open = await deps.db.query(
        'SELECT 1 FROM alerts WHERE user_id = $1 AND event_id = $2 AND resolved_at IS NULL LIMIT 1',
        [userId, eventId],
      )
      if (open.rows.length > 0) purpose = 'medical_alerts'
    }
    if (!purpose) {
      requests.inc({ route: 'runner', outcome: 'not_visible' })
      return send(res, 404, { error: 'no such visible runner in this event' })
    }
    await deps.audit.record({
      actor: actorOf(p),
      action: 'console.runner',
      subject: userId,
      purpose,
      details: { eventId },
    })
    const cursor = Math.max(parsed.data.cursor, Date.now() - RUNNER_HISTORY_MS)
    const page = await deps.services.sync.query(
      userId,
      syncRequestSchema.parse({ cursor: { readings: cursor }, kinds: ['readings'], limit, resolution: 'raw' }),
    )
    const rows = (page['readings'] as { t: number; device: string; metric: string; value: number }[]).filter((r) =>
      DETAIL_METRICS.has(r.metric),
    )
    requests.inc({ route: 'runner', outcome: 'ok' })
    send(res, 200, {
      userId,
      readings: rows.map((r) => ({ t: r.t, device: r.device, metric: r.metric, value: r.value })),
      nextCursor: (page['nextCursor'] as { readings: number }).readings,
      more: page['more'],
    })
  }

  return async (req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean> => {
    const asset = req.method === 'GET' ? STATIC[url.pathname] : undefined
    if (asset) {
      const text = staticFile(asset.file)
      if (text === null) send(res, 500, { error: `console asset ${asset.file} missing` })
      else send(res, 200, text, asset.type)
      return true
    }
    if (req.method === 'GET' && url.pathname === '/assets/mqtt.min.js') {
      send(res, 200, mqttBrowserBundle(), 'text/javascript; charset=utf-8')
      return true
    }
    if (req.method === 'GET' && url.pathname === '/console/config') {
      const c = deps.config.console
      send(res, 200, { tileUrl: c.tileUrl ?? null, tileAttribution: c.tileAttribution })
      return true
    }
    if (!url.pathname.startsWith('/console/api/')) return false

    if (req.method === 'GET' && url.pathname === '/console/api/alerts') {
      const p = await staff(req, res, 'alerts')
      if (!p) return true
      const eventId = url.searchParams.get('event') ?? ''
      if (!isValidId(eventId)) {
        bad(res, 'alerts', 'event: a valid event id is required')
        return true
      }
      if (!mayWatch(p, eventId)) {
        requests.inc({ route: 'alerts', outcome: 'forbidden' })
        send(res, 403, { error: 'not your event' })
        return true
      }
      const alerts = await (await alertActions()).list(eventId)
      // The queue names many runners at once: one row for the listing (as subscribe.event for the topic).
      await deps.audit.record({
        actor: actorOf(p),
        action: 'console.alerts',
        subject: null,
        purpose: 'medical_alerts',
        details: { eventId, alerts: alerts.length },
      })
      requests.inc({ route: 'alerts', outcome: 'ok' })
      send(res, 200, { eventId, alerts })
      return true
    }
    const m = /^\/console\/api\/alerts\/([0-9a-f-]{36})\/(acknowledge|resolve)$/.exec(url.pathname)
    if (req.method === 'POST' && m) {
      const route = m[2] as 'acknowledge' | 'resolve'
      const p = await staff(req, res, route)
      if (!p) return true
      let body: z.infer<typeof actionBody>
      try {
        const parsed = actionBody.safeParse(await readJson(req))
        if (!parsed.success) {
          bad(res, route, issues(parsed.error))
          return true
        }
        body = parsed.data
      } catch (err) {
        bad(res, route, `invalid JSON: ${(err as Error).message}`)
        return true
      }
      try {
        const msg = await (await alertActions()).act(
          m[1] as string,
          route,
          actorOf(p),
          p.role === 'admin' ? null : p.events,
          body.note ?? null,
        )
        requests.inc({ route, outcome: 'ok' })
        send(res, 200, msg)
      } catch (err) {
        if (!(err instanceof AlertActionError)) throw err
        requests.inc({ route, outcome: err.status === 409 ? 'conflict' : err.status === 403 ? 'forbidden' : 'missing' })
        send(res, err.status, { error: err.message })
      }
      return true
    }
    if (req.method === 'POST' && url.pathname === '/console/api/runner') {
      const p = await staff(req, res, 'runner')
      if (p) await runner(req, res, p)
      return true
    }
    requests.inc({ route: 'unknown', outcome: 'missing' })
    send(res, 404, { error: 'not found' })
    return true
  }
}

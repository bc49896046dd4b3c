// Public live streams on the HTTP port (README "Live streams"): Server-Sent Events of an event's board, its
// differentially private statistics and a consenting runner's progress, plus ETag'ed JSON snapshots for CDNs.
// A public event (events.is_public) is open to anyone; a private one needs a bearer token that may see it, as on MQTT
// (src/identity/acl.ts): an admin, one of the event's medics, or a participant.
import crypto from 'node:crypto'
import type http from 'node:http'
import type { Aedes } from 'aedes'
import { createSession } from 'better-sse'
import type { BrokerConfig } from '../../broker.config.js'
import type { AclLookups } from '../identity/acl.js'
import type { Tokens } from '../identity/tokens.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { ConsentGate } from '../outputs/consent-gate.js'
import type { RetainedPersistence } from '../outputs/retained-index.js'
import { LiveSources } from '../outputs/sse/sources.js'
import { LiveHub, type LiveStream, type ReaderState } from '../outputs/sse/streams.js'
import type { ZoneGate } from '../outputs/zone-gate.js'
import type { Db } from '../store/db.js'
import { ID_RE, topicFor } from '../topics/grammar.js'

export interface LiveDeps {
  config: BrokerConfig
  aedes: Pick<Aedes, 'subscribe' | 'unsubscribe'>
  persistence: Pick<RetainedPersistence, 'createRetainedStreamCombi'>
  consent: Pick<ConsentGate, 'load' | 'allows' | 'onChange'>
  zones: ZoneGate
  db: Db
  lookups: Pick<AclLookups, 'eventIsPublic' | 'isParticipant'>
  tokens: Pick<Tokens, 'verify'>
  metrics: Metrics
  log: Logger
}

export interface LiveRoutes {
  /** true when the request was a /live/ one (answered here) */
  handle(req: http.IncomingMessage, res: http.ServerResponse, url: URL): Promise<boolean>
  /** erasure: the person's runner streams end */
  forget(userId: string): void
  stop(): void
}

const PATH = /^\/live\/events\/([^/]+)\/(?:(leaderboard|stats)(\.json)?|runners\/([^/]+))$/
const BIB_RE = /^[A-Za-z0-9_.-]{1,32}$/

type Access = { ok: true; public: boolean } | { ok: false; status: 401 | 403 }

function send(res: http.ServerResponse, status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers })
  res.end(JSON.stringify(body))
}

export function installLive(d: LiveDeps): LiveRoutes {
  const settings = d.config.live
  const hub = new LiveHub(settings, d.metrics.registry)
  const sources = new LiveSources({
    aedes: d.aedes,
    persistence: d.persistence,
    consent: d.consent,
    zones: d.zones,
    // The streams' snapshots and position look-ups are outputs (src/outputs/sse/), not background work.
    db: d.db.lane('outputs'),
    hub,
    runnerPositions: settings.runnerPositions,
    log: d.log.child({ stage: 'live' }),
  })
  /** requests between the capacity check and their session: counted, so a burst cannot overshoot the cap */
  let opening = 0
  const refuse = (res: http.ServerResponse, status: number, reason: string, error: string, h = {}) => {
    hub.metrics.refused.inc({ reason })
    send(res, status, { error }, h)
  }

  async function access(eventId: string, authorization: string | undefined): Promise<Access> {
    if (await d.lookups.eventIsPublic(eventId)) return { ok: true, public: true }
    const bearer = /^Bearer\s+(.+)$/i.exec(authorization ?? '')?.[1]
    if (!bearer) return { ok: false, status: 401 }
    try {
      const p = await d.tokens.verify(bearer)
      if (p.role === 'admin' || (p.role === 'medic' && p.events.includes(eventId))) return { ok: true, public: false }
      if (p.role !== 'device' && p.userId && (await d.lookups.isParticipant(eventId, p.userId)))
        return { ok: true, public: false }
      return { ok: false, status: 403 }
    } catch {
      return { ok: false, status: 401 }
    }
  }

  async function snapshot(req: http.IncomingMessage, res: http.ServerResponse, topic: string, pub: boolean) {
    const body = await sources.current(topic)
    if (body === null) return refuse(res, 404, 'not_found', 'nothing published for this event yet')
    const etag = `"${crypto.createHash('sha256').update(body).digest('base64url').slice(0, 27)}"`
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/json',
      // One second: a CDN in front absorbs the readers and asks once a second at most; private answers stay private.
      'cache-control': `${pub ? 'public' : 'private'}, max-age=1`,
      etag,
      ...(pub ? { 'access-control-allow-origin': '*' } : { vary: 'authorization' }),
    }
    const match = req.headers['if-none-match']
    if (match?.split(',').some((t) => t.trim().replace(/^W\//, '') === etag)) {
      res.writeHead(304, headers)
      return res.end()
    }
    res.writeHead(200, headers)
    res.end(req.method === 'HEAD' ? undefined : body)
  }

  async function stream(req: http.IncomingMessage, res: http.ServerResponse, s: LiveStream, pub: boolean) {
    try {
      await s.ready
    } catch (err) {
      hub.release(s)
      d.log.warn({ err: (err as Error).message, stream: s.key }, 'live stream could not follow its source')
      return refuse(res, 503, 'unavailable', 'live stream unavailable, retry', { 'retry-after': '2' })
    }
    if (req.destroyed || res.destroyed) return hub.release(s)
    const session = await createSession<ReaderState>(req, res, {
      keepAlive: null, // the hub's one heartbeat timer (streams.ts)
      retry: settings.retryMs,
      // States are serialised and framed once per stream (streams.ts), not once per reader.
      serializer: String,
      headers: {
        'x-accel-buffering': 'no',
        ...(pub ? { 'access-control-allow-origin': '*' } : {}),
      },
      state: { res, waiting: false, sent: '' },
    })
    session.state.sent = session.lastId
    // Gone while the session opened: its disconnect already happened, and would never reach the hub.
    if (req.destroyed || res.destroyed) return hub.release(s)
    hub.attach(s, session)
  }

  return {
    async handle(req, res, url) {
      const m = PATH.exec(url.pathname)
      if (!m) return false
      if (!settings.enabled) {
        refuse(res, 404, 'not_found', 'live streams are off on this broker')
        return true
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        refuse(res, 405, 'bad_request', 'GET only', { allow: 'GET, HEAD' })
        return true
      }
      const [, eventId = '', what, json, rawBib] = m
      const bib = rawBib === undefined ? undefined : decodeURIComponent(rawBib)
      if (!ID_RE.test(eventId) || (bib !== undefined && !BIB_RE.test(bib))) {
        refuse(res, 400, 'bad_request', 'event ids are [A-Za-z0-9_-]{1,64}, bibs [A-Za-z0-9_.-]{1,32}')
        return true
      }
      const a = await access(eventId, req.headers.authorization)
      if (!a.ok) {
        if (a.status === 401) refuse(res, 401, 'unauthorized', 'this event is not public: a bearer token is needed')
        else refuse(res, 403, 'forbidden', 'this token may not see this event')
        return true
      }
      if (json) {
        await snapshot(req, res, what === 'stats' ? topicFor.stats(eventId) : topicFor.leaderboard(eventId), a.public)
        return true
      }
      if (req.method === 'HEAD') {
        refuse(res, 405, 'bad_request', 'streams are GET only', { allow: 'GET' })
        return true
      }
      if (hub.open + opening >= settings.maxClients) {
        refuse(res, 503, 'capacity', 'too many live clients on this node, retry', { 'retry-after': '5' })
        return true
      }
      opening++
      try {
        let s: LiveStream
        if (bib !== undefined) {
          const userId = await sources.runnerWithConsent(eventId, bib)
          // One answer whether the bib is unknown or its runner does not share: bibs cannot be probed for consent.
          if (!userId) {
            refuse(res, 404, 'not_found', 'no runner with this bib shares their progress')
            return true
          }
          s = sources.runner(eventId, bib, userId)
        } else s = what === 'stats' ? sources.stats(eventId) : sources.leaderboard(eventId)
        await stream(req, res, s, a.public)
      } finally {
        opening--
      }
      return true
    },
    forget(userId) {
      sources.endRunner(userId, 'erasure')
    },
    stop() {
      sources.stop()
      hub.stop()
    },
  }
}

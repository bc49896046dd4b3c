// Where the live streams get their states: the same output messages the MQTT clients get, one computation for both
// transports. A stream follows its topic inside the broker (Aedes' internal subscription: in cluster mode that is the
// shared emitter, so a board published by the leader reaches the SSE clients of every node), and starts from the
// retained message. Boards and statistics go out as published (they are public already: consenting runners only, and
// differentially private counts). A runner's stream is a projection: progress only (distance, rank, pace), never a
// health value, and their last position outside their privacy zones; only while they grant `live_sharing`.
import type { Aedes, AedesPublishPacket } from 'aedes'
import type { Logger } from '../../log.js'
import type { Db } from '../../store/db.js'
import { topicFor } from '../../topics/grammar.js'
import type { ConsentGate } from '../consent-gate.js'
import type { LiveSnapshot, PositionsMessage } from '../payloads.js'
import type { RetainedPersistence } from '../retained-index.js'
import type { ZoneGate } from '../zone-gate.js'
import type { LiveHub, LiveStream } from './streams.js'

/** `GET /live/events/{eid}/runners/{bib}`: a runner's public progress (docs in README "Live streams"). */
export interface RunnerLiveMessage {
  eventId: string
  bib: string
  /** epoch ms when the broker sent this state */
  t: number
  /** epoch ms of the newest committed sample behind the progress, null before any */
  sampleT: number | null
  distanceM: number | null
  rank: number | null
  paceSPerKm: number | null
  /** the newest position outside the runner's privacy zones; null when none (or live.runnerPositions is off) */
  position: { t: number; lat: number; lon: number } | null
}

export interface SourceDeps {
  aedes: Pick<Aedes, 'subscribe' | 'unsubscribe'>
  persistence: Pick<RetainedPersistence, 'createRetainedStreamCombi'>
  consent: Pick<ConsentGate, 'load' | 'allows' | 'onChange'>
  zones: ZoneGate
  db: Db
  hub: LiveHub
  runnerPositions: boolean
  log: Logger
}

type Deliver = (packet: AedesPublishPacket, cb: () => void) => void

interface RunnerFeed {
  userId: string
  onPosition(p: PositionsMessage['runners'][number]): void
}

export class LiveSources {
  /** per event: the positions subscription shared by its runner streams */
  private readonly positions = new Map<string, { feeds: Map<string, Set<RunnerFeed>>; stop: Promise<() => void> }>()
  /** runner streams by user, to end them when the runner withdraws `live_sharing` */
  private readonly runners = new Map<string, Set<LiveStream>>()
  private readonly unsubscribe: () => void

  constructor(private readonly deps: SourceDeps) {
    this.unsubscribe = deps.consent.onChange((c) => {
      if (c.purpose === 'live_sharing' && !c.granted) this.endRunner(c.userId)
    })
  }

  stop(): void {
    this.unsubscribe()
  }

  /** The event's board (`events/{eid}/leaderboard`) as published. */
  leaderboard(eventId: string): LiveStream {
    return this.passthrough(`leaderboard:${eventId}`, 'leaderboard', topicFor.leaderboard(eventId))
  }

  /** The event's differentially private statistics (`events/{eid}/stats`) as released. */
  stats(eventId: string): LiveStream {
    return this.passthrough(`stats:${eventId}`, 'stats', topicFor.stats(eventId))
  }

  /** The current retained message of a topic (the snapshot endpoints), or null. */
  async current(topic: string): Promise<string | null> {
    for await (const p of this.deps.persistence.createRetainedStreamCombi([topic])) {
      const payload = (p as { payload: Buffer | string }).payload
      return payload.length > 0 ? payload.toString() : null
    }
    return null
  }

  /** The participant with this bib, when they grant `live_sharing` now; null otherwise (one answer for both). */
  async runnerWithConsent(eventId: string, bib: string): Promise<string | null> {
    const row = await this.deps.db.query<{ user_id: string }>(
      'SELECT user_id FROM participants WHERE event_id = $1 AND bib = $2 LIMIT 1',
      [eventId, bib],
    )
    const userId = row.rows[0]?.user_id
    if (!userId) return null
    await Promise.all([this.deps.consent.load([userId]), this.deps.zones.load([userId])])
    return this.deps.consent.allows(userId, 'live_sharing') ? userId : null
  }

  /** A consenting runner's progress, projected from their live snapshots and the event's positions feed. */
  runner(eventId: string, bib: string, userId: string): LiveStream {
    const { hub, consent, zones } = this.deps
    return hub.acquire(`runner:${eventId}:${userId}`, 'runner', async (stream) => {
      const state: RunnerLiveMessage = {
        eventId,
        bib,
        t: 0,
        sampleT: null,
        distanceM: null,
        rank: null,
        paceSPerKm: null,
        position: null,
      }
      const render = () => {
        // Asked at every state: a withdrawal (or an erasure, which forgets the consent) ends the stream.
        if (!consent.allows(userId, 'live_sharing')) return this.endRunner(userId)
        state.t = Date.now()
        stream.update(JSON.stringify(state))
      }
      const onSnapshot = (payload: string) => {
        const snap = JSON.parse(payload) as LiveSnapshot
        if (snap.eventId !== eventId) return
        state.sampleT = snap.t
        state.distanceM = snap.distanceM
        state.rank = snap.rank
        state.paceSPerKm = snap.paceSPerKm
        render()
      }
      const feed: RunnerFeed = {
        userId,
        onPosition: (p) => {
          // The medics' feed shows positions inside a zone during an open alert; the public never sees those.
          if (zones.withheld(userId, p.lat, p.lon)) return
          if (state.position && state.position.t >= p.t) return
          state.position = { t: p.t, lat: p.lat, lon: p.lon }
          render()
        },
      }
      let heard = false
      const topic = topicFor.live(userId)
      const stopLive = await this.follow(topic, (payload) => {
        heard = true
        onSnapshot(payload)
      })
      const stopPositions = this.deps.runnerPositions ? this.followPositions(eventId, feed) : () => {}
      const set = this.runners.get(userId) ?? new Set()
      set.add(stream)
      this.runners.set(userId, set)
      const retained = await this.current(topic)
      if (retained && !heard) onSnapshot(retained)
      else if (!heard) render()
      return () => {
        stopLive()
        stopPositions()
        set.delete(stream)
        if (set.size === 0 && this.runners.get(userId) === set) this.runners.delete(userId)
      }
    })
  }

  /** Ends the user's runner streams (a withdrawal of `live_sharing`, an erasure). */
  endRunner(userId: string, reason: 'consent' | 'erasure' = 'consent'): void {
    const set = this.runners.get(userId)
    if (set) this.deps.hub.end((s) => set.has(s), reason)
  }

  private passthrough(key: string, kind: 'leaderboard' | 'stats', topic: string): LiveStream {
    return this.deps.hub.acquire(key, kind, async (stream) => {
      let heard = false
      const stop = await this.follow(topic, (payload) => {
        heard = true
        stream.update(payload)
      })
      // Subscribed first, then the retained state: a message published in between is not overwritten by an older one.
      const retained = await this.current(topic)
      if (retained && !heard) stream.update(retained)
      return stop
    })
  }

  /** One positions subscription per event, shared by its runner streams. */
  private followPositions(eventId: string, feed: RunnerFeed): () => void {
    let entry = this.positions.get(eventId)
    if (!entry) {
      const feeds = new Map<string, Set<RunnerFeed>>()
      const stop = this.follow(topicFor.eventPositions(eventId), (payload) => {
        const msg = JSON.parse(payload) as PositionsMessage
        for (const r of msg.runners) for (const f of feeds.get(r.userId) ?? []) f.onPosition(r)
      })
      entry = { feeds, stop }
      this.positions.set(eventId, entry)
    }
    const current = entry
    const mine = current.feeds.get(feed.userId) ?? new Set()
    mine.add(feed)
    current.feeds.set(feed.userId, mine)
    return () => {
      mine.delete(feed)
      if (mine.size === 0) current.feeds.delete(feed.userId)
      if (current.feeds.size > 0) return
      if (this.positions.get(eventId) === current) this.positions.delete(eventId)
      void current.stop.then((stop) => stop())
    }
  }

  /** Follows a topic inside the broker; resolves once subscribed, with the function that stops it. */
  private async follow(topic: string, onPayload: (payload: string) => void): Promise<() => void> {
    const { aedes, log } = this.deps
    const deliver: Deliver = (packet, cb) => {
      try {
        if (packet.payload.length > 0) onPayload(packet.payload.toString())
      } catch (err) {
        log.warn({ err: (err as Error).message, topic }, 'live stream: output message not understood')
      }
      cb()
    }
    await new Promise<void>((resolve) => aedes.subscribe(topic, deliver, resolve))
    return () => aedes.unsubscribe(topic, deliver, () => {})
  }
}

// The race-control map's feed (`events/{eid}/positions`, payloads.ts PositionsMessage): runners whose committed
// positions changed are marked, and each output tick publishes their newest position per event, to medics only
// (the ACL), for runners who granted `live_sharing` and outside their privacy zones. The one exception to the zones
// is an open alert: medics then see where the runner is whatever the zones say (vital interest, GDPR Art. 9(2)(c)),
// for as long as the alert is open and the runner has not withdrawn `medical_alerts`.
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import { topicFor } from '../topics/grammar.js'
import type { ConsentGate } from './consent-gate.js'
import type { PositionsMessage } from './payloads.js'
import type { UserState } from './user-state.js'
import type { ZoneGate } from './zone-gate.js'

/** runners per message: a 50,000-runner race must not become one 4 MB message per second */
export const POSITIONS_PER_MESSAGE = 500

/**
 * May medics see this user's positions inside their zones now? While an alert of the user's current event is open
 * (one the event's medics got: the user has not withdrawn `medical_alerts`).
 */
export function medicsOverrideZones(u: UserState, consent: Pick<ConsentGate, 'allows'>): boolean {
  const eventId = u.event?.eventId
  if (eventId === undefined || u.open.size === 0) return false
  let open = false
  for (const ep of u.open.values()) if (ep.eventId === eventId) open = true
  return open && consent.allows(u.userId, 'medical_alerts')
}

export class PositionFeed {
  private readonly dirty = new Set<string>()

  constructor(
    private readonly users: ReadonlyMap<string, UserState>,
    private readonly consent: Pick<ConsentGate, 'allows'>,
    private readonly zones: Pick<ZoneGate, 'withheld'>,
    private readonly publisher: Publisher,
    private readonly metrics: Pick<Metrics, 'outputsWithheld'>,
    private readonly perMessage: number = POSITIONS_PER_MESSAGE,
  ) {}

  /** The user's newest position goes out with the next tick. */
  mark(userId: string): void {
    this.dirty.add(userId)
  }

  /** Erasure: nothing of the user goes out any more. */
  forget(userId: string): void {
    this.dirty.delete(userId)
  }

  publish(): void {
    if (this.dirty.size === 0) return
    const byEvent = new Map<string, PositionsMessage['runners']>()
    for (const id of this.dirty) {
      const u = this.users.get(id)
      const p = u?.window.pos[u.window.pos.length - 1]
      if (!u?.event || !p) continue
      // Asked at every tick: a withdrawal takes the runner off the map from the next one.
      if (!this.consent.allows(id, 'live_sharing')) {
        this.metrics.outputsWithheld.inc({ output: 'event_positions', reason: 'consent' })
        continue
      }
      const alert = medicsOverrideZones(u, this.consent)
      if (!alert && this.zones.withheld(id, p.lat, p.lon)) {
        this.metrics.outputsWithheld.inc({ output: 'event_positions', reason: 'privacy_zone' })
        continue
      }
      const list = byEvent.get(u.event.eventId) ?? []
      list.push({ userId: id, t: p.t, lat: p.lat, lon: p.lon, alert })
      byEvent.set(u.event.eventId, list)
    }
    this.dirty.clear()
    const now = Date.now()
    for (const [eventId, runners] of byEvent)
      for (let i = 0; i < runners.length; i += this.perMessage) {
        const msg: PositionsMessage = { eventId, t: now, runners: runners.slice(i, i + this.perMessage) }
        this.publisher.publish(topicFor.eventPositions(eventId), JSON.stringify(msg), 0, false)
      }
  }
}

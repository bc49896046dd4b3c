// Live snapshots (`users/{uid}/live`, retained, QoS 0): users whose state changed are marked, and each output tick
// publishes one snapshot per marked user — at most one per user per tick — in slices with yields in between.
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import { topicFor } from '../topics/grammar.js'
import type { LeaderboardStore } from './leaderboard.js'
import type { LiveSnapshot } from './payloads.js'
import { predictedMaxHr } from './rules.js'
import { paceOf, type UserState } from './user-state.js'

/** live snapshots published between two yields to the event loop */
export const LIVE_SLICE = 50

/** HR zone 1–5 by percent of the predicted max (50–60 … 90+); null below 50 % or without HR. */
export function zoneOf(hr: number | null, max: number): number | null {
  if (hr === null) return null
  const pct = hr / max
  if (pct < 0.5) return null
  return Math.min(5, Math.floor((pct - 0.5) * 10) + 1)
}

export class LiveSnapshots {
  /** users with new committed samples since the last tick */
  private readonly dirty = new Set<string>()

  constructor(
    /** private ranks come from here */
    private readonly leaderboard: Pick<LeaderboardStore, 'ranks'>,
    private readonly publisher: Publisher,
    private readonly metrics: Pick<Metrics, 'liveSnapshots'>,
    private readonly users: ReadonlyMap<string, UserState>,
    private readonly slice: number = LIVE_SLICE,
  ) {}

  /** The user's snapshot goes out with the next tick (once, however many batches arrive before it). */
  mark(userId: string): void {
    this.dirty.add(userId)
  }

  /** Erasure: no snapshot of the user goes out any more (one marked is dropped). */
  forget(userId: string): void {
    this.dirty.delete(userId)
  }

  /** Publishes a snapshot for every user marked since the last call. */
  async publish(): Promise<void> {
    const userIds = [...this.dirty]
    this.dirty.clear()
    if (userIds.length === 0) return
    const byEvent = new Map<string, string[]>()
    for (const id of userIds) {
      const ev = this.users.get(id)?.event
      if (!ev) continue
      const list = byEvent.get(ev.eventId) ?? []
      list.push(id)
      byEvent.set(ev.eventId, list)
    }
    const ranks = new Map<string, number>()
    for (const [eventId, ids] of byEvent) {
      for (const [u, r] of await this.leaderboard.ranks(eventId, ids)) ranks.set(u, r)
    }
    for (let i = 0; i < userIds.length; i++) {
      // Yield between slices: at 50,000 runners one tick publishes 50,000 snapshots, and doing them in one go would
      // hold every PUBACK waiting behind it for hundreds of milliseconds.
      if (i > 0 && i % this.slice === 0) await new Promise<void>((resolve) => setImmediate(resolve))
      const id = userIds[i] as string
      const u = this.users.get(id)
      if (!u) continue
      const lastHr = u.window.hr[u.window.hr.length - 1] ?? null
      const t = Math.max(lastHr?.t ?? 0, u.window.pos[u.window.pos.length - 1]?.t ?? 0)
      const snap: LiveSnapshot = {
        t,
        hr: lastHr?.hr ?? null,
        zone: zoneOf(lastHr?.hr ?? null, predictedMaxHr(u.profile.age)),
        paceSPerKm: paceOf(u, t),
        distanceM: Math.round(u.distanceM),
        eventId: u.event?.eventId ?? null,
        rank: ranks.get(id) ?? null,
      }
      this.publisher.publish(topicFor.live(id), JSON.stringify(snap), 0, true)
      this.metrics.liveSnapshots.inc()
    }
  }
}

// Event leaderboards on the output tick: distances raised as committed GPS moves runners, and each event whose board
// changed published at most once per tick (`events/{eid}/leaderboard`, retained). The board itself (ranking, consent)
// is the LeaderboardStore; this adds pace and ETA from the runners' windows.
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import { topicFor } from '../topics/grammar.js'
import type { ConsentGate } from './consent-gate.js'
import type { LeaderboardStore } from './leaderboard.js'
import type { LeaderboardMessage } from './payloads.js'
import { type EventCtx, paceOf, type UserState } from './user-state.js'

/**
 * Cluster mode (src/cluster/boards.ts): the boards this node changed are handed over, and only the events returned
 * are published here — all the cluster's changed boards on the leader, none elsewhere.
 */
export interface BoardCoordinator {
  collect(changed: readonly string[], sync: (eventId: string) => Promise<void>): Promise<string[]>
}

export class LeaderboardTicks {
  /** events whose board changed since the last tick */
  private readonly dirty = new Set<string>()
  coordinator: BoardCoordinator | null = null

  constructor(
    private readonly leaderboard: LeaderboardStore,
    private readonly consent: Pick<ConsentGate, 'leaderboardVisible'>,
    private readonly publisher: Publisher,
    private readonly metrics: Pick<Metrics, 'leaderboardPublishSeconds' | 'leaderboardBytes'>,
    /** the states pace and course are read from; a runner without one (another broker's) gets nulls */
    private readonly users: ReadonlyMap<string, UserState>,
    private readonly topN: number,
  ) {}

  /** Raises a runner's distance on the event's board; the board goes out with the next tick. */
  async record(event: EventCtx, userId: string, distanceM: number): Promise<void> {
    // Consent is asked at every update, so a runner who withdrew is never put back on the public board.
    await this.leaderboard.update(
      event.eventId,
      userId,
      distanceM,
      this.consent.leaderboardVisible(userId, event.consent),
    )
    this.dirty.add(event.eventId)
  }

  /** A consent change: the runner is shown or hidden on the event's board, which goes out with the next tick. */
  async setVisibility(eventId: string, userId: string, visible: boolean): Promise<void> {
    await this.leaderboard.setVisibility(eventId, userId, visible)
    this.dirty.add(eventId)
  }

  /** The event's board goes out with the next tick (after a runner was removed from it). */
  touch(eventId: string): void {
    this.dirty.add(eventId)
  }

  /** Publishes every board that changed since the last call. */
  async publish(): Promise<void> {
    const changed = [...this.dirty]
    this.dirty.clear()
    let events = changed
    if (this.coordinator) {
      try {
        events = await this.coordinator.collect(changed, (e) => this.leaderboard.sync?.(e) ?? Promise.resolve())
      } catch (err) {
        for (const e of changed) this.dirty.add(e) // handed over at the next tick
        throw err
      }
    }
    for (const eventId of events) {
      const started = performance.now()
      const { runners, top } = await this.leaderboard.top(eventId, this.topN)
      const now = Date.now()
      const msg: LeaderboardMessage = {
        eventId,
        t: now,
        runners,
        top: top.map((e, i) => {
          const u = this.users.get(e.userId)
          const pace = u ? paceOf(u, u.window.pos[u.window.pos.length - 1]?.t ?? now) : null
          const course = u?.event?.courseM ?? null
          return {
            rank: i + 1,
            userId: e.userId,
            distanceM: Math.round(e.distanceM),
            paceSPerKm: pace,
            etaS:
              pace !== null && course !== null ? Math.max(0, Math.round(((course - e.distanceM) / 1000) * pace)) : null,
          }
        }),
      }
      const payload = JSON.stringify(msg)
      this.publisher.publish(topicFor.leaderboard(eventId), payload, 0, true)
      this.metrics.leaderboardPublishSeconds.observe((performance.now() - started) / 1000)
      this.metrics.leaderboardBytes.observe(payload.length)
    }
  }
}

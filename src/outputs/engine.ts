// Outputs fed inline by committed samples only (an alert never refers to data that could still be lost): per-user
// state with rolling windows, alert episodes (persisted, then published), live snapshots at most once per second per
// user, leaderboards at most once per second per event. A user's state is reloaded from the database when it is first
// needed, so a restart or a second broker process continues where the first left off.
//
// This is the conductor: it keeps the users' states, serialises each user's work, and hands the parts to
// user-state.ts (windows), state-load.ts (batched loads), episodes.ts (alerts), live.ts and leaderboard-tick.ts.
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { DERIVED_METRICS } from '../pipeline/derive.js'
import type { CommittedBatch, Publisher } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import type { ConsentGate } from './consent-gate.js'
import { Episodes } from './episodes.js'
import type { LeaderboardStore } from './leaderboard.js'
import { type BoardCoordinator, LeaderboardTicks } from './leaderboard-tick.js'
import { LiveSnapshots } from './live.js'
import { PositionFeed } from './positions.js'
import { DEFAULT_RULES, type RuleSettings } from './rules.js'
import { SilentRunners } from './silence.js'
import { StateLoader } from './state-load.js'
import { addScalar, blankState, pushCompact, trimWindow, type UserState } from './user-state.js'
import { NO_ZONES, type ZoneGate } from './zone-gate.js'

export { pushCompact } from './user-state.js'

export interface OutputSettings {
  rules: RuleSettings
  /** how much history a window keeps */
  windowMs: number
  /** batches whose newest sample is older than this are stored but not alerted on (backfill) */
  alertRecencyMs: number
  /** after an episode resolves, the same kind does not reopen for this long */
  cooldownMs: number
  tickMs: number
  leaderboardTopN: number
  /** a user's distance comes from one GPS source at a time (watch or phone, not both added); another device takes
   *  over once the current one has sent no distance for this long (sample time) */
  distanceSourceSwitchMs?: number
  /** a racing runner whose every device is silent this long raises runner_silent (0 = off; src/outputs/silence.ts) */
  silentRunnerMs?: number
}

export const DEFAULT_OUTPUT_SETTINGS: OutputSettings = {
  rules: DEFAULT_RULES,
  windowMs: 12 * 60_000,
  alertRecencyMs: 15 * 60_000,
  cooldownMs: 2 * 60_000,
  tickMs: 1000,
  leaderboardTopN: 10,
  distanceSourceSwitchMs: 30_000,
  silentRunnerMs: 120_000,
}

export class OutputEngine {
  private readonly users = new Map<string, UserState>()
  private readonly loader: StateLoader
  private readonly episodes: Episodes
  private readonly silence: SilentRunners
  private readonly live: LiveSnapshots
  private readonly boards: LeaderboardTicks
  private readonly positions: PositionFeed
  /** users being forgotten (erasure): batches of theirs that still arrive are dropped */
  private readonly forgetting = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private ticking = false
  private stopped = false
  private readonly unsubscribe: () => void
  /** what SpO2, steps and positions keep: the rules look at no more than twice their longest span */
  private readonly shortHorizonMs: number

  constructor(
    private readonly db: Db,
    private readonly leaderboard: LeaderboardStore,
    private readonly consent: ConsentGate,
    publisher: Publisher,
    metrics: Metrics,
    private readonly log: Logger,
    private readonly settings: OutputSettings = DEFAULT_OUTPUT_SETTINGS,
    /** the users' privacy zones: positions inside go to nobody but the user (docs/privacy.md "Privacy zones") */
    zones: ZoneGate = NO_ZONES,
  ) {
    const r = settings.rules
    this.shortHorizonMs = Math.min(settings.windowMs, 2 * Math.max(r.stoppedMs, r.spo2SustainedMs, 60_000))
    this.boards = new LeaderboardTicks(leaderboard, consent, publisher, metrics, this.users, settings.leaderboardTopN)
    this.live = new LiveSnapshots(leaderboard, publisher, metrics, this.users)
    this.positions = new PositionFeed(this.users, consent, zones, publisher, metrics)
    this.episodes = new Episodes(db, publisher, consent, metrics, settings, zones)
    this.silence = new SilentRunners(
      this.episodes,
      settings.silentRunnerMs ?? DEFAULT_OUTPUT_SETTINGS.silentRunnerMs ?? 0,
    )
    // Zones load with consent, before any output of the user: both are asked synchronously at publish time.
    const gates = {
      load: async (ids: readonly string[]) => void (await Promise.all([consent.load(ids), zones.load(ids)])),
    }
    this.loader = new StateLoader(db, this.users, this.boards, gates, settings.windowMs)
    this.unsubscribe = consent.onChange((c) => {
      if (c.purpose === 'leaderboard') void this.leaderboardConsentChanged(c.userId)
    })
  }

  /**
   * The user-level `leaderboard` purpose changed: every board the runner is on shows or hides them on its next tick
   * (within a second), also where this process holds no state of theirs (the runner is ranked by another process).
   */
  private async leaderboardConsentChanged(userId: string): Promise<void> {
    try {
      const rows = await this.db.query<{ event_id: string; consent_leaderboard: boolean }>(
        'SELECT event_id, consent_leaderboard FROM participants WHERE user_id = $1',
        [userId],
      )
      for (const r of rows.rows)
        await this.boards.setVisibility(
          r.event_id,
          userId,
          this.consent.leaderboardVisible(userId, r.consent_leaderboard),
        )
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'leaderboard consent update failed')
    }
  }

  /** Cluster mode: boards are published by the cluster's leaderboard leader only (src/cluster/boards.ts). */
  coordinateBoards(c: BoardCoordinator): void {
    this.boards.coordinator = c
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.settings.tickMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.stopped = true
    this.unsubscribe()
    if (this.timer) clearInterval(this.timer)
    await Promise.allSettled([...this.users.values()].map((u) => u.chain))
  }

  /** Called by the ingest stage after a commit; work is serialised per user. */
  onCommitted(batch: CommittedBatch): void {
    if (this.stopped || this.forgetting.has(batch.userId)) return
    const u = this.users.get(batch.userId)
    const run = async (state: UserState) => this.apply(state, batch)
    if (u) {
      u.chain = u.chain
        .then(() => run(u))
        .catch((err: Error) => this.log.error({ err: err.message }, 'output processing failed'))
      return
    }
    const pending: UserState = blankState(batch.userId, batch.deviceId)
    this.users.set(batch.userId, pending)
    pending.chain = this.loader
      .load(pending)
      .then(() => run(pending))
      .catch((err: Error) => this.log.error({ err: err.message }, 'output processing failed'))
  }

  private async apply(u: UserState, b: CommittedBatch): Promise<void> {
    u.lastUse = Date.now()
    u.lastDeviceId = b.deviceId
    let newest = 0
    let moved = 0
    for (const s of b.scalars) {
      if (s.metric === DERIVED_METRICS.distance) {
        // Already counted when the state was loaded from the database (or from an earlier batch).
        if (s.t > u.distanceT && this.isDistanceSource(u, b.deviceId, s.t)) {
          moved += s.value
          u.distanceT = s.t
        }
      } else addScalar(u, s.metric, s.t, s.value)
      if (s.t > newest) newest = s.t
    }
    for (const p of b.positions) {
      pushCompact(u.window.pos, { t: p.t, lat: p.lat, lon: p.lon })
      if (p.t > newest) newest = p.t
    }
    trimWindow(u.window, this.settings.windowMs, this.shortHorizonMs)

    if (u.event) {
      if (u.firstT === null) u.firstT = newest
      if (moved > 0) {
        u.distanceM += moved
        await this.boards.record(u.event, u.userId, u.distanceM)
      }
    }
    await this.silence.heard(u, b.deviceId, Date.now())
    this.live.mark(u.userId)
    if (b.positions.length > 0) this.positions.mark(u.userId)
    if (newest >= Date.now() - this.settings.alertRecencyMs) await this.episodes.review(u, newest)
  }

  /** One GPS source at a time: the current one, or another once the current one has been silent long enough. */
  private isDistanceSource(u: UserState, deviceId: string, t: number): boolean {
    const switchMs = this.settings.distanceSourceSwitchMs ?? DEFAULT_OUTPUT_SETTINGS.distanceSourceSwitchMs ?? 0
    if (u.distanceSource !== null && u.distanceSource !== deviceId && t - u.distanceSourceT <= switchMs) return false
    u.distanceSource = deviceId
    u.distanceSourceT = t
    return true
  }

  private async tick(): Promise<void> {
    // A tick that outlasts the interval (a slow Redis) is not overlapped by the next one.
    if (this.ticking) return
    this.ticking = true
    try {
      await this.boards.publish()
      await this.live.publish()
      this.positions.publish()
      this.checkSilence()
      this.evictIdle()
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'output tick failed')
    } finally {
      this.ticking = false
    }
  }

  /** Racing runners whose devices all went quiet (silence.ts), each within its user's serialised work. */
  private checkSilence(): void {
    const now = Date.now()
    for (const u of this.users.values()) {
      if (!u.event || u.heardFrom.size === 0) continue
      u.chain = u.chain
        .then(() => this.silence.check(u, now))
        .catch((err: Error) => this.log.error({ err: err.message }, 'silent-runner check failed'))
    }
  }

  /** A device of this user disconnected cleanly (MQTT DISCONNECT): its silence raises no alert. */
  deviceSignedOff(userId: string, deviceId: string): void {
    const u = this.users.get(userId)
    if (!u) return
    u.chain = u.chain.then(() => this.silence.signedOff(u, deviceId))
  }

  /** Users silent for an hour are forgotten; their state reloads from the database if they come back. */
  private evictIdle(): void {
    const cutoff = Date.now() - 3600_000
    for (const [id, u] of this.users) if (u.lastUse < cutoff && u.open.size === 0) this.users.delete(id)
  }

  /**
   * Erasure: waits for the user's output work under way (an alert being written), then drops everything held about
   * them: state, windows, open episodes, a pending live snapshot. Call once no more of their batches can commit.
   */
  async forget(userId: string): Promise<void> {
    this.forgetting.add(userId)
    try {
      await this.users.get(userId)?.chain
      this.users.delete(userId)
      this.live.forget(userId)
      this.positions.forget(userId)
    } finally {
      this.forgetting.delete(userId)
    }
  }

  /**
   * Erasure: takes the user off these events' boards (memory or Redis); each board is republished on the next tick.
   * Returns on how many boards they were.
   */
  async removeFromBoards(userId: string, eventIds: readonly string[]): Promise<number> {
    let removed = 0
    for (const eventId of eventIds) {
      if (await this.leaderboard.remove(eventId, userId)) removed++
      this.boards.touch(eventId)
    }
    return removed
  }

  /** Whether any state of the user is held here (cluster mode: a node that gains a user drops stale state). */
  holds(userId: string): boolean {
    return this.users.has(userId)
  }

  /** Test and ops hook: the distance pulsegate has for a user in their current event. */
  distanceOf(userId: string): number | null {
    return this.users.get(userId)?.distanceM ?? null
  }
}

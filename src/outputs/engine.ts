// Outputs fed inline by committed samples only (an alert never refers to data that could still be lost): per-user
// state with rolling windows, alert episodes (persisted, then published), live snapshots at most once per second per
// user, leaderboards at most once per second per event. A user's state is reloaded from the database when it is first
// needed, so a restart or a second broker process continues where the first left off.
import crypto from 'node:crypto'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { DERIVED_METRICS } from '../pipeline/derive.js'
import type { CommittedBatch, Publisher } from '../pipeline/ingest.js'
import { METRICS } from '../pipeline/types.js'
import type { Db } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import type { LeaderboardStore } from './leaderboard.js'
import type { AlertKind, AlertMessage, LeaderboardMessage, LiveSnapshot, Severity } from './payloads.js'
import {
  DEFAULT_RULES,
  evaluate,
  type Profile,
  predictedMaxHr,
  recentSpeed,
  type RuleSettings,
  type Window,
} from './rules.js'

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
}

export const DEFAULT_OUTPUT_SETTINGS: OutputSettings = {
  rules: DEFAULT_RULES,
  windowMs: 12 * 60_000,
  alertRecencyMs: 15 * 60_000,
  cooldownMs: 2 * 60_000,
  tickMs: 1000,
  leaderboardTopN: 10,
}

interface EventCtx {
  eventId: string
  consent: boolean
  startsAt: number | null
  courseM: number | null
}

interface OpenEpisode {
  id: string
  kind: AlertKind
  severity: Severity
  openedAt: number
  deviceId: string
  eventId: string | null
}

interface UserState {
  userId: string
  profile: Profile
  window: Window
  event: EventCtx | null
  distanceM: number
  /** newest distance sample counted: derived distance only grows forward, so this makes counting idempotent */
  distanceT: number
  firstT: number | null
  open: Map<AlertKind, OpenEpisode>
  resolvedAt: Map<AlertKind, number>
  lastDeviceId: string
  chain: Promise<void>
  lastUse: number
}

/** live snapshots published between two yields to the event loop */
const LIVE_SLICE = 50

/** Users whose states load together, and batches of them loading at once (see OutputEngine.loadQueue). */
const LOAD_BATCH = 200
const LOADS_IN_FLIGHT = 2

function trim<T extends { t: number }>(xs: T[], from: number): void {
  let i = 0
  while (i < xs.length && (xs[i] as T).t < from) i++
  if (i > 0) xs.splice(0, i)
}

/**
 * Windows keep at most one point per series per second: a device sampling faster (or a load generator) would otherwise
 * fill them with hundreds of thousands of objects per user and the heap with garbage the GC must keep promoting. A newer
 * sample in the same second replaces the last point; out-of-order samples are inserted. (Steps are kept as they come.)
 */
const WINDOW_RESOLUTION_MS = 1000

export function pushCompact<T extends { t: number }>(xs: T[], x: T): void {
  const last = xs[xs.length - 1]
  if (last && x.t > last.t && Math.floor(x.t / WINDOW_RESOLUTION_MS) === Math.floor(last.t / WINDOW_RESOLUTION_MS)) {
    xs[xs.length - 1] = x
    return
  }
  pushSorted(xs, x)
}

/** Inserts in time order; a second point with the same time is the same sample (reloaded or redelivered): skipped. */
function pushSorted<T extends { t: number }>(xs: T[], x: T): void {
  const last = xs[xs.length - 1]
  if (!last || last.t < x.t) {
    xs.push(x)
    return
  }
  let i = xs.length
  while (i > 0 && (xs[i - 1] as T).t > x.t) i--
  if (i > 0 && (xs[i - 1] as T).t === x.t) return
  xs.splice(i, 0, x)
}

function zoneOf(hr: number | null, max: number): number | null {
  if (hr === null) return null
  const pct = hr / max
  if (pct < 0.5) return null
  return Math.min(5, Math.floor((pct - 0.5) * 10) + 1)
}

export class OutputEngine {
  private readonly users = new Map<string, UserState>()
  private readonly liveDirty = new Set<string>()
  private readonly boardDirty = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private ticking = false
  private stopped = false
  /**
   * Users whose state awaits loading. At a race start thousands of users appear within seconds: their states load
   * together, LOAD_BATCH at a time, each batch in a handful of statements, with at most LOADS_IN_FLIGHT batches out
   * so the loads never flood the pool that connects and subscriptions also use.
   */
  private readonly loadQueue: { u: UserState; resolve(): void; reject(err: Error): void }[] = []
  private loadsInFlight = 0
  /** what SpO2, steps and positions keep: the rules look at no more than twice their longest span */
  private readonly shortHorizonMs: number

  constructor(
    private readonly db: Db,
    private readonly leaderboard: LeaderboardStore,
    private readonly publisher: Publisher,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly settings: OutputSettings = DEFAULT_OUTPUT_SETTINGS,
  ) {
    const r = settings.rules
    this.shortHorizonMs = Math.min(settings.windowMs, 2 * Math.max(r.stoppedMs, r.spo2SustainedMs, 60_000))
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.settings.tickMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearInterval(this.timer)
    await Promise.allSettled([...this.users.values()].map((u) => u.chain))
  }

  /** Called by the ingest stage after a commit; work is serialised per user. */
  onCommitted(batch: CommittedBatch): void {
    if (this.stopped) return
    const u = this.users.get(batch.userId)
    const run = async (state: UserState) => this.apply(state, batch)
    if (u) {
      u.chain = u.chain
        .then(() => run(u))
        .catch((err: Error) => this.log.error({ err: err.message }, 'output processing failed'))
      return
    }
    const pending: UserState = this.blank(batch.userId, batch.deviceId)
    this.users.set(batch.userId, pending)
    pending.chain = this.queueLoad(pending)
      .then(() => run(pending))
      .catch((err: Error) => this.log.error({ err: err.message }, 'output processing failed'))
  }

  private queueLoad(u: UserState): Promise<void> {
    return new Promise((resolve, reject) => {
      this.loadQueue.push({ u, resolve, reject })
      // Users first seen in the same turn of the event loop (one commit carries many users) share a batch.
      if (this.loadQueue.length === 1 && this.loadsInFlight < LOADS_IN_FLIGHT) setImmediate(() => this.nextLoads())
    })
  }

  private nextLoads(): void {
    while (this.loadQueue.length > 0 && this.loadsInFlight < LOADS_IN_FLIGHT) {
      const batch = this.loadQueue.splice(0, LOAD_BATCH)
      this.loadsInFlight++
      this.load(batch.map((b) => b.u))
        .then(
          () => {
            for (const b of batch) b.resolve()
          },
          (err: Error) => {
            for (const b of batch) {
              // Forget the blank state, so the user's next batch loads again instead of running without its profile,
              // event and open episodes for the rest of the race.
              if (this.users.get(b.u.userId) === b.u) this.users.delete(b.u.userId)
              b.reject(err)
            }
          },
        )
        .finally(() => {
          this.loadsInFlight--
          this.nextLoads()
        })
    }
  }

  private blank(userId: string, deviceId: string): UserState {
    return {
      userId,
      profile: { age: null, hrHigh: null, hrLow: null },
      window: { hr: [], spo2: [], steps: [], pos: [] },
      event: null,
      distanceM: 0,
      distanceT: 0,
      firstT: null,
      open: new Map(),
      resolvedAt: new Map(),
      lastDeviceId: deviceId,
      chain: Promise.resolve(),
      lastUse: Date.now(),
    }
  }

  /**
   * Seeds users' states from the database: profile, active event, open episodes, recent window, event distance. The
   * telemetry queries take device keys as an array parameter, which always gets the (device_key, …) indexes: joined
   * to `devices` by user, the planner sized the users' devices from the devices table's statistics, which right after
   * a swarm is registered still describe an empty table, and chose parallel sequential scans (~100 ms per user).
   */
  private async load(us: UserState[]): Promise<void> {
    const now = Date.now()
    const byId = new Map(us.map((u) => [u.userId, u]))
    const ids = [...byId.keys()]
    // One statement after another: a batch holds one pool connection, whatever its size.
    const profiles = await this.db.query<{
      user_id: string
      birth_year: number | null
      hr_high: number | null
      hr_low: number | null
    }>('SELECT user_id, birth_year, hr_high, hr_low FROM users WHERE user_id = ANY($1::text[])', [ids])
    const events = await this.db.query<{
      user_id: string
      event_id: string
      consent_leaderboard: boolean
      starts_at: Date | null
      distance_m: number | null
    }>(
      `SELECT DISTINCT ON (p.user_id) p.user_id, p.event_id, p.consent_leaderboard, e.starts_at, e.distance_m
         FROM participants p JOIN events e USING (event_id)
         WHERE p.user_id = ANY($1::text[])
           AND (e.starts_at IS NULL OR e.starts_at BETWEEN now() - interval '12 hours' AND now() + interval '1 hour')
         ORDER BY p.user_id, e.starts_at DESC NULLS LAST`,
      [ids],
    )
    const open = await this.db.query<{
      user_id: string
      id: string
      kind: AlertKind
      severity: Severity
      opened_at: Date
      device_id: string
      event_id: string | null
    }>(
      `SELECT user_id, id, kind, severity, opened_at, device_id, event_id FROM alerts
         WHERE user_id = ANY($1::text[]) AND resolved_at IS NULL`,
      [ids],
    )
    const devices = await this.db.query<{ device_key: number; user_id: string }>(
      'SELECT device_key, user_id FROM devices WHERE user_id = ANY($1::text[])',
      [ids],
    )
    for (const p of profiles.rows) {
      const u = byId.get(p.user_id)
      if (!u) continue
      u.profile = {
        age: p.birth_year ? new Date().getUTCFullYear() - p.birth_year : null,
        hrHigh: p.hr_high,
        hrLow: p.hr_low,
      }
    }
    for (const ev of events.rows) {
      const u = byId.get(ev.user_id)
      if (!u) continue
      u.event = {
        eventId: ev.event_id,
        consent: ev.consent_leaderboard,
        startsAt: ev.starts_at ? new Date(ev.starts_at).getTime() : null,
        courseM: ev.distance_m,
      }
    }
    for (const o of open.rows) {
      byId.get(o.user_id)?.open.set(o.kind, {
        id: o.id,
        kind: o.kind,
        severity: o.severity,
        openedAt: new Date(o.opened_at).getTime(),
        deviceId: o.device_id,
        eventId: o.event_id,
      })
    }
    const owner = new Map<number, UserState>()
    for (const d of devices.rows) {
      const u = byId.get(d.user_id)
      if (u) owner.set(Number(d.device_key), u)
    }
    const keys = [...owner.keys()]
    if (keys.length === 0) return
    const from = now - this.settings.windowMs
    const recent = await this.db.query<{ device_key: number; t: number; metric: number; value: number }>(
      `SELECT s.device_key, (extract(epoch FROM s.time) * 1000)::float8 AS t, s.metric::int AS metric, s.value
         FROM samples s WHERE s.device_key = ANY($1::int[]) AND s.metric IN (1, 2, 3) AND s.time >= to_timestamp($2 / 1000.0)
         ORDER BY s.time`,
      [keys, from],
    )
    const pos = await this.db.query<{ device_key: number; t: number; lat: number; lon: number }>(
      `SELECT p.device_key, (extract(epoch FROM p.time) * 1000)::float8 AS t, p.lat, p.lon FROM positions p
         WHERE p.device_key = ANY($1::int[]) AND p.time >= to_timestamp($2 / 1000.0) ORDER BY p.time`,
      [keys, from],
    )
    for (const r of recent.rows) {
      const u = owner.get(Number(r.device_key))
      if (u) this.addScalar(u, Number(r.metric), Number(r.t), Number(r.value))
    }
    for (const r of pos.rows) {
      const u = owner.get(Number(r.device_key))
      if (u) pushCompact(u.window.pos, { t: Number(r.t), lat: r.lat, lon: r.lon })
    }

    // Distance covered in each user's event so far, counted from the event's start (or the last 12 hours).
    const racing = keys.filter((k) => owner.get(k)?.event)
    if (racing.length === 0) return
    const since = racing.map((k) => {
      const ev = owner.get(k)?.event
      return ev?.startsAt ?? now - 12 * 3600_000
    })
    const d = await this.db.query<{ device_key: number; d: number | null; first: number | null; last: number | null }>(
      `SELECT k.device_key, sum(s.value)::float8 AS d, (extract(epoch FROM min(s.time)) * 1000)::float8 AS first,
              (extract(epoch FROM max(s.time)) * 1000)::float8 AS last
       FROM unnest($1::int[], $2::float8[]) AS k(device_key, since)
       JOIN samples s ON s.device_key = k.device_key AND s.metric = $3 AND s.time >= to_timestamp(k.since / 1000.0)
       GROUP BY k.device_key`,
      [racing, since, DERIVED_METRICS.distance],
    )
    const moved = new Set<UserState>()
    for (const r of d.rows) {
      const u = owner.get(Number(r.device_key))
      if (!u || r.d === null) continue
      u.distanceM += Number(r.d)
      if (r.first !== null) u.firstT = u.firstT === null ? Number(r.first) : Math.min(u.firstT, Number(r.first))
      if (r.last !== null) u.distanceT = Math.max(u.distanceT, Number(r.last))
      moved.add(u)
    }
    for (const u of moved) {
      if (!u.event || u.distanceM <= 0) continue
      await this.leaderboard.update(u.event.eventId, u.userId, u.distanceM, u.event.consent)
      this.boardDirty.add(u.event.eventId)
    }
  }

  private addScalar(u: UserState, metric: number, t: number, value: number): void {
    if (metric === METRICS.hr) pushCompact(u.window.hr, { t, hr: value })
    else if (metric === METRICS.spo2) pushCompact(u.window.spo2, { t, v: value })
    // Steps are counts: merging them would lose the sample times that make a re-applied sample recognisable (the
    // first batch of a user is in the loaded window and applied again). Their window is only a few minutes long.
    else if (metric === METRICS.steps) pushSorted(u.window.steps, { t, v: value })
  }

  private async apply(u: UserState, b: CommittedBatch): Promise<void> {
    u.lastUse = Date.now()
    u.lastDeviceId = b.deviceId
    let newest = 0
    let moved = 0
    for (const s of b.scalars) {
      if (s.metric === DERIVED_METRICS.distance) {
        // Already counted when the state was loaded from the database (or from an earlier batch).
        if (s.t > u.distanceT) {
          moved += s.value
          u.distanceT = s.t
        }
      } else this.addScalar(u, s.metric, s.t, s.value)
      if (s.t > newest) newest = s.t
    }
    for (const p of b.positions) {
      pushCompact(u.window.pos, { t: p.t, lat: p.lat, lon: p.lon })
      if (p.t > newest) newest = p.t
    }
    // Each series keeps what the rules look at: HR the whole window (10-minute sustained rules), the others less.
    const latest = Math.max(u.window.hr[u.window.hr.length - 1]?.t ?? 0, u.window.pos[u.window.pos.length - 1]?.t ?? 0)
    const shortFrom = latest - this.shortHorizonMs
    trim(u.window.hr, latest - this.settings.windowMs)
    trim(u.window.spo2, shortFrom)
    trim(u.window.steps, shortFrom)
    trim(u.window.pos, shortFrom)

    if (u.event) {
      if (u.firstT === null) u.firstT = newest
      if (moved > 0) {
        u.distanceM += moved
        await this.leaderboard.update(u.event.eventId, u.userId, u.distanceM, u.event.consent)
        this.boardDirty.add(u.event.eventId)
      }
    }
    this.liveDirty.add(u.userId)
    if (newest >= Date.now() - this.settings.alertRecencyMs) await this.alerts(u, newest)
  }

  private async alerts(u: UserState, now: number): Promise<void> {
    const findings = evaluate(u.window, {
      now,
      inRace: u.event !== null,
      profile: u.profile,
      settings: this.settings.rules,
    })
    for (const f of findings) {
      const open = u.open.get(f.kind)
      if (f.active && !open) {
        const cooled = (u.resolvedAt.get(f.kind) ?? 0) + this.settings.cooldownMs
        if (f.t < cooled) continue
        const ep: OpenEpisode = {
          id: crypto.randomUUID(),
          kind: f.kind,
          severity: f.severity,
          openedAt: f.t,
          deviceId: u.lastDeviceId,
          eventId: u.event?.eventId ?? null,
        }
        // Persist first: the alert a user sees always exists in the database with its id.
        const res = await this.db.query(
          `INSERT INTO alerts (id, user_id, device_id, event_id, kind, severity, opened_at, evidence)
           VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7 / 1000.0), $8) ON CONFLICT DO NOTHING`,
          [ep.id, u.userId, ep.deviceId, ep.eventId, ep.kind, ep.severity, ep.openedAt, JSON.stringify(f.evidence)],
        )
        if (res.rowCount === 0) continue // another broker process opened this episode
        u.open.set(f.kind, ep)
        this.metrics.alertsOpened.inc({ kind: f.kind })
        this.publishAlert(u, ep, 'opened', null, f.t, f.evidence)
      } else if (!f.active && open) {
        await this.db.query('UPDATE alerts SET resolved_at = to_timestamp($2 / 1000.0) WHERE id = $1', [open.id, f.t])
        u.open.delete(f.kind)
        u.resolvedAt.set(f.kind, f.t)
        this.metrics.alertsResolved.inc({ kind: f.kind })
        this.publishAlert(u, open, 'resolved', f.t, f.t, f.evidence)
      }
    }
  }

  private publishAlert(
    u: UserState,
    ep: OpenEpisode,
    state: 'opened' | 'resolved',
    resolvedAt: number | null,
    t: number,
    evidence: Record<string, number | null>,
  ): void {
    const msg: AlertMessage = {
      id: ep.id,
      kind: ep.kind,
      severity: ep.severity,
      state,
      userId: u.userId,
      deviceId: ep.deviceId,
      eventId: ep.eventId,
      openedAt: ep.openedAt,
      resolvedAt,
      evidence: { t, ...evidence },
    }
    const payload = JSON.stringify(msg)
    this.publisher.publish(topicFor.userAlerts(u.userId), payload, 1, false)
    if (ep.eventId) this.publisher.publish(topicFor.eventAlerts(ep.eventId), payload, 1, false)
  }

  private paceOf(u: UserState, now: number): number | null {
    const speed = recentSpeed(u.window.pos, now, 60_000)
    return speed !== null && speed > 0.3 ? Math.round(1000 / speed) : null
  }

  private async tick(): Promise<void> {
    // A tick that outlasts the interval (a slow Redis) is not overlapped by the next one.
    if (this.ticking) return
    this.ticking = true
    try {
      await this.publishBoards()
      await this.publishLive()
      this.evictIdle()
    } catch (err) {
      this.log.error({ err: (err as Error).message }, 'output tick failed')
    } finally {
      this.ticking = false
    }
  }

  private async publishBoards(): Promise<void> {
    const events = [...this.boardDirty]
    this.boardDirty.clear()
    for (const eventId of events) {
      const started = performance.now()
      const { runners, top } = await this.leaderboard.top(eventId, this.settings.leaderboardTopN)
      const now = Date.now()
      const msg: LeaderboardMessage = {
        eventId,
        t: now,
        runners,
        top: top.map((e, i) => {
          const u = this.users.get(e.userId)
          const pace = u ? this.paceOf(u, u.window.pos[u.window.pos.length - 1]?.t ?? now) : null
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

  private async publishLive(): Promise<void> {
    const userIds = [...this.liveDirty]
    this.liveDirty.clear()
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
      if (i > 0 && i % LIVE_SLICE === 0) await new Promise<void>((resolve) => setImmediate(resolve))
      const id = userIds[i] as string
      const u = this.users.get(id)
      if (!u) continue
      const lastHr = u.window.hr[u.window.hr.length - 1] ?? null
      const t = Math.max(lastHr?.t ?? 0, u.window.pos[u.window.pos.length - 1]?.t ?? 0)
      const snap: LiveSnapshot = {
        t,
        hr: lastHr?.hr ?? null,
        zone: zoneOf(lastHr?.hr ?? null, predictedMaxHr(u.profile.age)),
        paceSPerKm: this.paceOf(u, t),
        distanceM: Math.round(u.distanceM),
        eventId: u.event?.eventId ?? null,
        rank: ranks.get(id) ?? null,
      }
      this.publisher.publish(topicFor.live(id), JSON.stringify(snap), 0, true)
      this.metrics.liveSnapshots.inc()
    }
  }

  /** Users silent for an hour are forgotten; their state reloads from the database if they come back. */
  private evictIdle(): void {
    const cutoff = Date.now() - 3600_000
    for (const [id, u] of this.users) if (u.lastUse < cutoff && u.open.size === 0) this.users.delete(id)
  }

  /** Test and ops hook: the distance pulsegate has for a user in their current event. */
  distanceOf(userId: string): number | null {
    return this.users.get(userId)?.distanceM ?? null
  }
}

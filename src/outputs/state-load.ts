// Batched loads of users' output state from the database, so a restart or a second broker process continues where
// the first left off. At a race start thousands of users appear within seconds: their states load together,
// LOAD_BATCH at a time, each batch in a handful of statements, with at most LOADS_IN_FLIGHT batches out so the loads
// never flood the pool that connects and subscriptions also use.
import { DERIVED_METRICS } from '../pipeline/derive.js'
import type { Queryable } from '../store/db.js'
import type { ConsentGate } from './consent-gate.js'
import type { AlertKind, Severity } from './payloads.js'
import { addScalar, type EventCtx, pushCompact, type UserState } from './user-state.js'

/** Users whose states load together, and batches of them loading at once. */
export const LOAD_BATCH = 200
export const LOADS_IN_FLIGHT = 2

/** Where the distance a user already covered in their event goes once loaded (their leaderboard entry). */
export interface DistanceSink {
  record(event: EventCtx, userId: string, distanceM: number): Promise<void>
}

export class StateLoader {
  /** users whose state awaits loading */
  private readonly queue: { u: UserState; resolve(): void; reject(err: Error): void }[] = []
  private inFlight = 0

  constructor(
    private readonly db: Queryable,
    /** the engine's states: a blank whose load failed is removed from it */
    private readonly users: Map<string, UserState>,
    private readonly boards: DistanceSink,
    private readonly consent: Pick<ConsentGate, 'load'>,
    /** how much history a window keeps */
    private readonly windowMs: number,
  ) {}

  /** Seeds the blank state `u` from the database; resolves once it is loaded. */
  load(u: UserState): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queue.push({ u, resolve, reject })
      // Users first seen in the same turn of the event loop (one commit carries many users) share a batch.
      if (this.queue.length === 1 && this.inFlight < LOADS_IN_FLIGHT) setImmediate(() => this.next())
    })
  }

  private next(): void {
    while (this.queue.length > 0 && this.inFlight < LOADS_IN_FLIGHT) {
      const batch = this.queue.splice(0, LOAD_BATCH)
      this.inFlight++
      this.loadBatch(batch.map((b) => b.u))
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
          this.inFlight--
          this.next()
        })
    }
  }

  /**
   * Seeds users' states from the database: profile, active event, open episodes, recent window, event distance. The
   * telemetry queries take device keys as an array parameter, which always gets the (device_key, …) indexes: joined
   * to `devices` by user, the planner sized the users' devices from the devices table's statistics, which right after
   * a swarm is registered still describe an empty table, and chose parallel sequential scans (~100 ms per user).
   */
  private async loadBatch(us: UserState[]): Promise<void> {
    const now = Date.now()
    const byId = new Map(us.map((u) => [u.userId, u]))
    const ids = [...byId.keys()]
    // Consent first: the outputs ask it synchronously at publish time and fail closed for a user not loaded.
    await this.consent.load(ids)
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
    const from = now - this.windowMs
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
      if (u) addScalar(u, Number(r.metric), Number(r.t), Number(r.value))
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
    // One GPS source at a time: a user with a watch and a phone gets the distance of the device that covered more,
    // not both added.
    const best = new Map<UserState, number>()
    for (const r of d.rows) {
      const u = owner.get(Number(r.device_key))
      if (u && r.d !== null) best.set(u, Math.max(best.get(u) ?? 0, Number(r.d)))
    }
    for (const [u, dist] of best) u.distanceM += dist
    const moved = new Set<UserState>()
    for (const r of d.rows) {
      const u = owner.get(Number(r.device_key))
      if (!u || r.d === null) continue
      if (r.first !== null) u.firstT = u.firstT === null ? Number(r.first) : Math.min(u.firstT, Number(r.first))
      if (r.last !== null) u.distanceT = Math.max(u.distanceT, Number(r.last))
      moved.add(u)
    }
    for (const u of moved) {
      if (!u.event || u.distanceM <= 0) continue
      await this.boards.record(u.event, u.userId, u.distanceM)
    }
  }
}

// Where a release's data comes from: committed samples in SQL, for the consenting participants only.
//
// Consent: a participant counts only if their latest `research` consent row (per user and purpose, ordered by
// `at DESC, id DESC`) is granted; RESEARCH_CONSENTING_SQL is that predicate, set-wise. Where a per-user check in
// memory is at hand as well (the consent service's cache), the release takes the intersection of the two: a change
// that one of them has not seen yet can only remove a runner, never add one.
//
// Distance per runner is the sum of the derived GPS distance (metric 7) since the event's start, as the output engine
// counts it. Summing a marathon's worth of samples for 50,000 runners every 30 s would read ~10⁸ rows per release, so
// a ProgressSource keeps, per event, each device's sum up to a settled time (now − 60 s) and adds only the new slice
// each release; the last minute is read fresh each time (HR, pace, distance tail). Like the engine, a distance sample
// that arrives after its time was settled is not counted. A fresh ProgressSource (the CLI) sums from the start.
import { DERIVED_METRICS } from '../../pipeline/derive.js'
import { METRICS } from '../../pipeline/types.js'
import type { Queryable } from '../../store/db.js'
import type { UserProgress } from './cells.js'

/** Per-user consent check in memory, e.g. the consent service (which fails closed for users it has not loaded). */
export interface ConsentReader {
  allows(userId: string, purpose: 'research'): boolean
  /** loads the users' current consent into the reader, if it caches */
  load?(userIds: readonly string[]): Promise<void>
}

/** The participants of event $1 whose latest research consent is granted. */
export const RESEARCH_CONSENTING_SQL = `
  SELECT r.user_id FROM (
    SELECT DISTINCT ON (c.user_id) c.user_id, c.granted
      FROM consents c JOIN participants p ON p.user_id = c.user_id AND p.event_id = $1
      WHERE c.purpose = 'research'
      ORDER BY c.user_id, c.at DESC, c.id DESC) r
  WHERE r.granted`

export interface EventInfo {
  eventId: string
  startsAt: number
  courseM: number | null
}

/** The recent window: HR zone and pace are read over it; distance before it is settled (cached). */
export const RECENT_MS = 60_000
/** Slower than this (m/s) counts as not moving, as the live snapshot's pace does. */
const MIN_SPEED_MPS = 0.3
/** A pace needs fixes spanning at least this long within the recent window. */
const MIN_PACE_SPAN_MS = 20_000

interface EventCache {
  startsAt: number
  settledUntil: number
  byDevice: Map<number, number>
}

interface ConsentingRow {
  user_id: string
  birth_year: number | null
  devices: number[] | null
}

export class ProgressSource {
  private readonly cache = new Map<string, EventCache>()

  constructor(private readonly db: Queryable) {}

  async event(eventId: string): Promise<EventInfo | null> {
    const res = await this.db.query<{ starts_at: Date | null; distance_m: number | null }>(
      'SELECT starts_at, distance_m FROM events WHERE event_id = $1',
      [eventId],
    )
    const r = res.rows[0]
    if (!r) return null
    // An event without a start time has no "since": its statistics count from 12 hours back, as the engine does.
    const startsAt = r.starts_at ? new Date(r.starts_at).getTime() : Date.now() - 12 * 3600_000
    return { eventId, startsAt, courseM: r.distance_m }
  }

  /** Events under way: started, and started no longer than windowMs ago (the database's clock). */
  async eventsInProgress(windowMs: number): Promise<EventInfo[]> {
    const res = await this.db.query<{ event_id: string; starts_at: Date; distance_m: number | null }>(
      `SELECT event_id, starts_at, distance_m FROM events
        WHERE starts_at <= now() AND starts_at >= now() - $1 * interval '1 millisecond' ORDER BY event_id`,
      [windowMs],
    )
    return res.rows.map((r) => ({
      eventId: r.event_id,
      startsAt: new Date(r.starts_at).getTime(),
      courseM: r.distance_m,
    }))
  }

  /** Consenting participants with their birth year and devices. */
  async consenting(eventId: string, consent?: ConsentReader): Promise<ConsentingRow[]> {
    const res = await this.db.query<ConsentingRow>(
      `SELECT u.user_id, u.birth_year, array_agg(d.device_key) FILTER (WHERE d.device_key IS NOT NULL) AS devices
         FROM (${RESEARCH_CONSENTING_SQL}) k JOIN users u ON u.user_id = k.user_id
         LEFT JOIN devices d ON d.user_id = u.user_id
        GROUP BY u.user_id, u.birth_year ORDER BY u.user_id`,
      [eventId],
    )
    if (!consent) return res.rows
    await consent.load?.(res.rows.map((r) => r.user_id))
    return res.rows.filter((r) => consent.allows(r.user_id, 'research'))
  }

  /** Every consenting runner's progress at `now` (epoch ms). */
  async progress(ev: EventInfo, now: number, consent?: ConsentReader): Promise<UserProgress[]> {
    const users = await this.consenting(ev.eventId, consent)
    const owner = new Map<number, ConsentingRow>()
    for (const u of users) for (const k of u.devices ?? []) owner.set(Number(k), u)
    const keys = [...owner.keys()]
    const settled = await this.settledDistance(ev, keys, now - RECENT_MS)
    const recent = keys.length === 0 ? [] : await this.recent(ev, keys, now)

    const acc = new Map<string, { d: number; hrSum: number; hrN: number; pace: number | null; span: number }>()
    for (const u of users) acc.set(u.user_id, { d: 0, hrSum: 0, hrN: 0, pace: null, span: 0 })
    for (const [key, d] of settled) {
      const a = acc.get(owner.get(key)?.user_id ?? '')
      if (a) a.d += d
    }
    for (const r of recent) {
      const a = acc.get(owner.get(Number(r.device_key))?.user_id ?? '')
      if (!a) continue
      a.d += Number(r.d_sum ?? 0)
      a.hrSum += Number(r.hr_sum ?? 0)
      a.hrN += Number(r.hr_n)
      // Pace from the fixes inside the window: the first one's distance was covered before the window, so it is left
      // out. A runner with several devices gets the pace of the one with the longest span.
      const span = Number(r.d_last ?? 0) - Number(r.d_first ?? 0)
      if (r.d_first !== null && span >= MIN_PACE_SPAN_MS && span > a.span) {
        const speed = (Number(r.d_sum) - Number(r.d_first_v)) / (span / 1000)
        a.span = span
        a.pace = speed > MIN_SPEED_MPS ? Math.round(1000 / speed) : null
      }
    }
    return users.map((u) => {
      const a = acc.get(u.user_id) as { d: number; hrSum: number; hrN: number; pace: number | null }
      return {
        userId: u.user_id,
        distanceM: a.d,
        hrBpm: a.hrN > 0 ? a.hrSum / a.hrN : null,
        birthYear: u.birth_year,
        paceSPerKm: a.pace,
      }
    })
  }

  /** Each device's distance from the event's start up to `until`, from the cache plus the slice since it. */
  private async settledDistance(ev: EventInfo, keys: number[], until: number): Promise<Map<number, number>> {
    let c = this.cache.get(ev.eventId)
    // A moved start, or a clock that went back, invalidates what was summed.
    if (!c || c.startsAt !== ev.startsAt || until < c.settledUntil) {
      c = { startsAt: ev.startsAt, settledUntil: ev.startsAt, byDevice: new Map() }
      this.cache.set(ev.eventId, c)
    }
    const fresh = keys.filter((k) => !c.byDevice.has(k))
    const known = keys.filter((k) => c.byDevice.has(k))
    const next = new Map<number, number>()
    // Devices seen for the first time (new consent, new device, empty cache): from the start.
    for (const [k, d] of await this.sumDistance(fresh, ev.startsAt, true, until)) next.set(k, d)
    for (const k of fresh) if (!next.has(k)) next.set(k, 0)
    if (until > c.settledUntil) {
      const slice = await this.sumDistance(known, c.settledUntil, false, until)
      for (const k of known) next.set(k, (c.byDevice.get(k) ?? 0) + (slice.get(k) ?? 0))
    } else for (const k of known) next.set(k, c.byDevice.get(k) ?? 0)
    // Only devices of runners who consent now stay cached: a withdrawal drops them.
    c.byDevice = next
    c.settledUntil = Math.max(c.settledUntil, until)
    return next
  }

  private async sumDistance(
    keys: number[],
    from: number,
    fromInclusive: boolean,
    until: number,
  ): Promise<Map<number, number>> {
    const out = new Map<number, number>()
    if (keys.length === 0 || until < from) return out
    const res = await this.db.query<{ device_key: number; d: number }>(
      `SELECT device_key, sum(value)::float8 AS d FROM samples
        WHERE device_key = ANY($1::int[]) AND metric = $2
          AND time ${fromInclusive ? '>=' : '>'} to_timestamp($3 / 1000.0) AND time <= to_timestamp($4 / 1000.0)
        GROUP BY device_key`,
      [keys, DERIVED_METRICS.distance, from, until],
    )
    for (const r of res.rows) out.set(Number(r.device_key), Number(r.d))
    return out
  }

  private async recent(ev: EventInfo, keys: number[], now: number) {
    const res = await this.db.query<{
      device_key: number
      hr_sum: number | null
      hr_n: number
      d_sum: number | null
      d_first: number | null
      d_last: number | null
      d_first_v: number | null
    }>(
      `SELECT device_key,
              sum(value) FILTER (WHERE metric = $2)::float8 AS hr_sum,
              count(*) FILTER (WHERE metric = $2)::int AS hr_n,
              sum(value) FILTER (WHERE metric = $3 AND time >= to_timestamp($6 / 1000.0))::float8 AS d_sum,
              (extract(epoch FROM min(time) FILTER (WHERE metric = $3 AND time >= to_timestamp($6 / 1000.0))) * 1000)::float8 AS d_first,
              (extract(epoch FROM max(time) FILTER (WHERE metric = $3 AND time >= to_timestamp($6 / 1000.0))) * 1000)::float8 AS d_last,
              ((array_agg(value ORDER BY time) FILTER (WHERE metric = $3 AND time >= to_timestamp($6 / 1000.0)))[1])::float8 AS d_first_v
         FROM samples
        WHERE device_key = ANY($1::int[]) AND metric IN ($2, $3)
          AND time > to_timestamp($4 / 1000.0) AND time <= to_timestamp($5 / 1000.0)
        GROUP BY device_key`,
      [keys, METRICS.hr, DERIVED_METRICS.distance, now - RECENT_MS, now, ev.startsAt],
    )
    return res.rows
  }

  /** Forgets events no longer in progress. */
  retain(eventIds: ReadonlySet<string>): void {
    for (const id of this.cache.keys()) if (!eventIds.has(id)) this.cache.delete(id)
  }
}

// Event leaderboards: one interface, two implementations that pass the same tests. Redis sorted sets when Redis is
// configured (ZADD GT: a late or out-of-order point never moves a runner backwards; shared by several brokers), an
// in-process map otherwise. Everyone is ranked (runners see their own rank privately); only consenting runners are
// on the public board.
import { Redis } from 'ioredis'

export interface BoardEntry {
  userId: string
  distanceM: number
}

export interface LeaderboardStore {
  /** Raises a runner's distance (never lowers it). */
  update(eventId: string, userId: string, distanceM: number, consent: boolean): Promise<void>
  /** The public top N (consenting runners, ranked among themselves) and how many runners are ranked in all. */
  top(eventId: string, n: number): Promise<{ runners: number; top: BoardEntry[] }>
  /** Private ranks (1 = first) among all runners of the event. */
  ranks(eventId: string, userIds: readonly string[]): Promise<Map<string, number>>
  /** Takes a runner off the event's boards (erasure); true when they were on it. */
  remove(eventId: string, userId: string): Promise<boolean>
  /** Shows or hides a runner already ranked on the public board (consent changed); ranks are untouched. */
  setVisibility(eventId: string, userId: string, visible: boolean): Promise<void>
  /** Writes this process's pending updates of the event through to the shared store (Redis; cluster mode). */
  sync?(eventId: string): Promise<void>
  close(): Promise<void>
}

interface MemEntry {
  userId: string
  d: number
  consent: boolean
}

interface MemBoard {
  byUser: Map<string, MemEntry>
  /** kept between refreshes: distances change little per second, so re-sorting a nearly sorted array is ~linear */
  order: MemEntry[]
  ranks: Map<string, number> | null
}

/** Redis orders equal scores by member; ZREVRANGE reverses that. The in-process board does the same. */
function byDistanceDesc(a: MemEntry, b: MemEntry): number {
  return b.d - a.d || (a.userId < b.userId ? 1 : a.userId > b.userId ? -1 : 0)
}

export class MemoryLeaderboard implements LeaderboardStore {
  private readonly events = new Map<string, MemBoard>()

  private board(eventId: string): MemBoard {
    let b = this.events.get(eventId)
    if (!b) {
      b = { byUser: new Map(), order: [], ranks: null }
      this.events.set(eventId, b)
    }
    return b
  }

  async update(eventId: string, userId: string, distanceM: number, consent: boolean): Promise<void> {
    const b = this.board(eventId)
    const cur = b.byUser.get(userId)
    if (!cur) {
      const e = { userId, d: distanceM, consent }
      b.byUser.set(userId, e)
      b.order.push(e)
    } else {
      if (cur.d >= distanceM && cur.consent === consent) return
      cur.d = Math.max(cur.d, distanceM)
      cur.consent = consent
    }
    b.ranks = null
  }

  private ranked(eventId: string): MemBoard {
    const b = this.board(eventId)
    if (!b.ranks) {
      b.order.sort(byDistanceDesc)
      const ranks = new Map<string, number>()
      for (let i = 0; i < b.order.length; i++) ranks.set((b.order[i] as MemEntry).userId, i + 1)
      b.ranks = ranks
    }
    return b
  }

  async top(eventId: string, n: number): Promise<{ runners: number; top: BoardEntry[] }> {
    const b = this.ranked(eventId)
    const top: BoardEntry[] = []
    for (const e of b.order) {
      if (!e.consent) continue
      top.push({ userId: e.userId, distanceM: e.d })
      if (top.length >= n) break
    }
    return { runners: b.order.length, top }
  }

  async ranks(eventId: string, userIds: readonly string[]): Promise<Map<string, number>> {
    const all = this.ranked(eventId).ranks as Map<string, number>
    const out = new Map<string, number>()
    for (const u of userIds) {
      const r = all.get(u)
      if (r !== undefined) out.set(u, r)
    }
    return out
  }

  async remove(eventId: string, userId: string): Promise<boolean> {
    const b = this.events.get(eventId)
    if (!b?.byUser.delete(userId)) return false
    b.order = b.order.filter((e) => e.userId !== userId)
    b.ranks = null
    return true
  }

  async setVisibility(eventId: string, userId: string, visible: boolean): Promise<void> {
    const e = this.events.get(eventId)?.byUser.get(userId)
    if (e) e.consent = visible
  }

  async close(): Promise<void> {}
}

/** ZADD per update costs ~100 µs of client CPU; at 50,000 runners/s that is 5 cores. Updates are therefore gathered
 * and written once per refresh as one variadic ZADD GT per board (chunked). */
/** Key prefix of a deployment's Redis boards: one per cluster.prefix, so the broker and the CLI agree. */
export function boardPrefix(clusterPrefix: string): string {
  return `${clusterPrefix}:lb`
}

export class RedisLeaderboard implements LeaderboardStore {
  private readonly redis: Redis
  private readonly pending = new Map<string, Map<string, { d: number; consent: boolean }>>()

  constructor(
    url: string,
    private readonly prefix = 'pulsegate:lb',
  ) {
    this.redis = new Redis(url, { enableAutoPipelining: true, maxRetriesPerRequest: 2, lazyConnect: false })
    // Without a listener ioredis logs "Unhandled error event"; outputs degrade, ingest is unaffected.
    this.redis.on('error', () => {})
  }

  /** the Redis connection, for /readyz (src/transport/readiness.ts) */
  get connection(): Redis {
    return this.redis
  }

  private key(eventId: string, board: 'all' | 'public'): string {
    return `${this.prefix}:{${eventId}}:${board}`
  }

  async update(eventId: string, userId: string, distanceM: number, consent: boolean): Promise<void> {
    let ev = this.pending.get(eventId)
    if (!ev) {
      ev = new Map()
      this.pending.set(eventId, ev)
    }
    const cur = ev.get(userId)
    ev.set(userId, { d: Math.max(cur?.d ?? 0, distanceM), consent })
  }

  private async flush(eventId: string): Promise<void> {
    const ev = this.pending.get(eventId)
    if (!ev || ev.size === 0) return
    this.pending.delete(eventId)
    const all: (string | number)[] = []
    const pub: (string | number)[] = []
    const unpub: string[] = []
    for (const [userId, { d, consent }] of ev) {
      all.push(d, userId)
      if (consent) pub.push(d, userId)
      else unpub.push(userId)
    }
    const CHUNK = 8000 // members per command: keeps each reply and Redis' own latency small
    const ops: Promise<unknown>[] = []
    for (let i = 0; i < all.length; i += CHUNK)
      ops.push(this.redis.zadd(this.key(eventId, 'all'), 'GT', ...all.slice(i, i + CHUNK)))
    for (let i = 0; i < pub.length; i += CHUNK)
      ops.push(this.redis.zadd(this.key(eventId, 'public'), 'GT', ...pub.slice(i, i + CHUNK)))
    for (let i = 0; i < unpub.length; i += CHUNK / 2)
      ops.push(this.redis.zrem(this.key(eventId, 'public'), ...unpub.slice(i, i + CHUNK / 2)))
    await Promise.all(ops)
  }

  sync(eventId: string): Promise<void> {
    return this.flush(eventId)
  }

  async top(eventId: string, n: number): Promise<{ runners: number; top: BoardEntry[] }> {
    await this.flush(eventId)
    const [range, count] = await Promise.all([
      this.redis.zrevrange(this.key(eventId, 'public'), 0, n - 1, 'WITHSCORES'),
      this.redis.zcard(this.key(eventId, 'all')),
    ])
    const top: BoardEntry[] = []
    for (let i = 0; i + 1 < range.length; i += 2)
      top.push({ userId: range[i] as string, distanceM: Number(range[i + 1]) })
    return { runners: count, top }
  }

  async setVisibility(eventId: string, userId: string, visible: boolean): Promise<void> {
    // Pending updates first, so a queued one cannot re-add a runner who has just withdrawn.
    const pending = this.pending.get(eventId)?.get(userId)
    if (pending) pending.consent = visible
    await this.flush(eventId)
    if (!visible) {
      await this.redis.zrem(this.key(eventId, 'public'), userId)
      return
    }
    const d = await this.redis.zscore(this.key(eventId, 'all'), userId)
    if (d !== null) await this.redis.zadd(this.key(eventId, 'public'), 'GT', Number(d), userId)
  }

  async ranks(eventId: string, userIds: readonly string[]): Promise<Map<string, number>> {
    await this.flush(eventId)
    const key = this.key(eventId, 'all')
    const out = new Map<string, number>()
    if (userIds.length > 500) {
      // Many runners at once (race day): one ordered read beats thousands of ZREVRANKs.
      const wanted = new Set(userIds)
      const members = await this.redis.zrevrange(key, 0, -1)
      for (let i = 0; i < members.length; i++)
        if (wanted.has(members[i] as string)) out.set(members[i] as string, i + 1)
      return out
    }
    const res = await Promise.all(userIds.map((u) => this.redis.zrevrank(key, u)))
    res.forEach((r, i) => {
      if (r !== null) out.set(userIds[i] as string, r + 1)
    })
    return out
  }

  async remove(eventId: string, userId: string): Promise<boolean> {
    const pending = this.pending.get(eventId)?.delete(userId) ?? false
    const res = await this.redis
      .multi()
      .zrem(this.key(eventId, 'all'), userId)
      .zrem(this.key(eventId, 'public'), userId)
      .exec()
    const [all] = res ?? []
    if (all?.[0]) throw all[0]
    return pending || Number(all?.[1] ?? 0) > 0
  }

  /** Test helper: forget an event entirely. */
  async clear(eventId: string): Promise<void> {
    this.pending.delete(eventId)
    await this.redis.del(this.key(eventId, 'all'), this.key(eventId, 'public'))
  }

  async close(): Promise<void> {
    await Promise.all([...this.pending.keys()].map((e) => this.flush(e).catch(() => {})))
    await this.redis.quit().catch(() => this.redis.disconnect())
  }
}

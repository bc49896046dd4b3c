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
  remove(eventId: string, userId: string): Promise<void>
  close(): Promise<void>
}

interface MemEntry {
  d: number
  consent: boolean
}

export class MemoryLeaderboard implements LeaderboardStore {
  private readonly events = new Map<string, Map<string, MemEntry>>()
  /** ranks computed by the last full sort, reused until the board changes */
  private readonly rankCache = new Map<string, Map<string, number>>()

  async update(eventId: string, userId: string, distanceM: number, consent: boolean): Promise<void> {
    let ev = this.events.get(eventId)
    if (!ev) {
      ev = new Map()
      this.events.set(eventId, ev)
    }
    const cur = ev.get(userId)
    if (cur && cur.d >= distanceM && cur.consent === consent) return
    ev.set(userId, { d: Math.max(cur?.d ?? 0, distanceM), consent })
    this.rankCache.delete(eventId)
  }

  private sorted(eventId: string): Map<string, number> {
    const cached = this.rankCache.get(eventId)
    if (cached) return cached
    const ev = this.events.get(eventId)
    const ranks = new Map<string, number>()
    if (ev) {
      // Ties are ordered by user id, as Redis orders equal scores by member (reversed for ZREVRANGE).
      const arr = [...ev.entries()].sort((a, b) => b[1].d - a[1].d || (a[0] < b[0] ? 1 : -1))
      for (let i = 0; i < arr.length; i++) ranks.set((arr[i] as [string, MemEntry])[0], i + 1)
    }
    this.rankCache.set(eventId, ranks)
    return ranks
  }

  async top(eventId: string, n: number): Promise<{ runners: number; top: BoardEntry[] }> {
    const ev = this.events.get(eventId)
    if (!ev) return { runners: 0, top: [] }
    const ranks = this.sorted(eventId)
    const top: BoardEntry[] = []
    for (const userId of ranks.keys()) {
      const e = ev.get(userId) as MemEntry
      if (!e.consent) continue
      top.push({ userId, distanceM: e.d })
      if (top.length >= n) break
    }
    return { runners: ev.size, top }
  }

  async ranks(eventId: string, userIds: readonly string[]): Promise<Map<string, number>> {
    const all = this.sorted(eventId)
    const out = new Map<string, number>()
    for (const u of userIds) {
      const r = all.get(u)
      if (r !== undefined) out.set(u, r)
    }
    return out
  }

  async remove(eventId: string, userId: string): Promise<void> {
    this.events.get(eventId)?.delete(userId)
    this.rankCache.delete(eventId)
  }

  async close(): Promise<void> {}
}

export class RedisLeaderboard implements LeaderboardStore {
  private readonly redis: Redis

  constructor(
    url: string,
    private readonly prefix = 'pulsegate:lb',
  ) {
    this.redis = new Redis(url, { enableAutoPipelining: true, maxRetriesPerRequest: 2, lazyConnect: false })
    // Without a listener ioredis logs "Unhandled error event"; outputs degrade, ingest is unaffected.
    this.redis.on('error', () => {})
  }

  private key(eventId: string, board: 'all' | 'public'): string {
    return `${this.prefix}:{${eventId}}:${board}`
  }

  async update(eventId: string, userId: string, distanceM: number, consent: boolean): Promise<void> {
    const m = this.redis.multi()
    m.zadd(this.key(eventId, 'all'), 'GT', distanceM, userId)
    if (consent) m.zadd(this.key(eventId, 'public'), 'GT', distanceM, userId)
    else m.zrem(this.key(eventId, 'public'), userId)
    await m.exec()
  }

  async top(eventId: string, n: number): Promise<{ runners: number; top: BoardEntry[] }> {
    const [range, count] = await Promise.all([
      this.redis.zrevrange(this.key(eventId, 'public'), 0, n - 1, 'WITHSCORES'),
      this.redis.zcard(this.key(eventId, 'all')),
    ])
    const top: BoardEntry[] = []
    for (let i = 0; i + 1 < range.length; i += 2)
      top.push({ userId: range[i] as string, distanceM: Number(range[i + 1]) })
    return { runners: count, top }
  }

  async ranks(eventId: string, userIds: readonly string[]): Promise<Map<string, number>> {
    const key = this.key(eventId, 'all')
    const res = await Promise.all(userIds.map((u) => this.redis.zrevrank(key, u)))
    const out = new Map<string, number>()
    res.forEach((r, i) => {
      if (r !== null) out.set(userIds[i] as string, r + 1)
    })
    return out
  }

  async remove(eventId: string, userId: string): Promise<void> {
    await this.redis.multi().zrem(this.key(eventId, 'all'), userId).zrem(this.key(eventId, 'public'), userId).exec()
  }

  /** Test helper: forget an event entirely. */
  async clear(eventId: string): Promise<void> {
    await this.redis.del(this.key(eventId, 'all'), this.key(eventId, 'public'))
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect())
  }
}

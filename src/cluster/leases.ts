// Leases in Redis: SET NX PX to take one, a compare-and-extend script to keep it. A lease that is not renewed
// expires on its own, so a node that dies (kill -9) hands its users and the leaderboards over within one lease time.
import type { Redis } from 'ioredis'

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`

export type LeaseResult = { owner: string; gained: boolean }

export class Leases {
  constructor(
    private readonly redis: Redis,
    /** this node's identity in leases: name plus a per-start nonce, so a restarted node never inherits a lease */
    readonly self: string,
    private readonly ttlMs: number,
  ) {}

  /** Takes the lease when free, else says who holds it (which may be this node). */
  async claim(key: string): Promise<LeaseResult> {
    const ok = await this.redis.set(key, this.self, 'PX', this.ttlMs, 'NX')
    if (ok === 'OK') return { owner: this.self, gained: true }
    const owner = await this.redis.get(key)
    if (owner === null) return this.claim(key) // expired in between
    return { owner, gained: false }
  }

  /** Extends the lease if this node still holds it; false when it was lost (expired and taken). */
  async renew(key: string): Promise<boolean> {
    return Number(await this.redis.eval(RENEW, 1, key, this.self, String(this.ttlMs))) === 1
  }

  async renewMany(keys: readonly string[]): Promise<boolean[]> {
    if (keys.length === 0) return []
    const p = this.redis.pipeline()
    for (const k of keys) p.eval(RENEW, 1, k, this.self, String(this.ttlMs))
    const res = (await p.exec()) ?? []
    return res.map(([err, v]) => !err && Number(v) === 1)
  }

  async release(key: string): Promise<void> {
    await this.redis.eval(RELEASE, 1, key, this.self)
  }

  /** Ends another node's lease if it still holds it (that node is gone: nobody listens on its channel). */
  async evict(key: string, owner: string): Promise<void> {
    await this.redis.eval(RELEASE, 1, key, owner)
  }
}

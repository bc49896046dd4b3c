// Registry look-ups for the ACL, cached briefly: a bridge publishing 10 batches/s must not cost 10 queries/s.
// Short TTLs keep ownership and participation changes visible within seconds.
import type { Registry } from '../store/registry.js'
import type { AclLookups } from './acl.js'

class TtlCache<V> {
  private readonly map = new Map<string, { v: V; exp: number }>()
  constructor(private readonly max = 100_000) {}
  async get(key: string, ttlMs: number, load: () => Promise<V>): Promise<V> {
    const now = Date.now()
    const hit = this.map.get(key)
    if (hit && hit.exp > now) return hit.v
    const v = await load()
    if (this.map.size >= this.max) this.map.clear()
    this.map.set(key, { v, exp: now + ttlMs })
    return v
  }
  delete(key: string): void {
    this.map.delete(key)
  }
}

export class CachedLookups implements AclLookups {
  private readonly owners = new TtlCache<{ userId: string; deviceKey: number } | null>()
  private readonly participants = new TtlCache<boolean>()
  private readonly publicEvents = new TtlCache<boolean>()

  constructor(
    private readonly registry: Registry,
    private readonly ttlMs = 30_000,
  ) {}

  deviceOwner(deviceId: string) {
    return this.owners.get(deviceId, this.ttlMs, async () => {
      const d = await this.registry.device(deviceId)
      return d && !d.revoked ? { userId: d.userId, deviceKey: d.deviceKey } : null
    })
  }

  isParticipant(eventId: string, userId: string) {
    return this.participants.get(`${eventId}\u0000${userId}`, this.ttlMs, () =>
      this.registry.isParticipant(eventId, userId),
    )
  }

  eventIsPublic(eventId: string) {
    return this.publicEvents.get(
      eventId,
      this.ttlMs,
      async () => (await this.registry.event(eventId))?.isPublic ?? false,
    )
  }

  forgetDevice(deviceId: string): void {
    this.owners.delete(deviceId)
  }
}

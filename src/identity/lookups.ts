// Registry look-ups for the ACL, cached briefly: a bridge publishing 10 batches/s must not cost 10 queries/s.
// Short TTLs keep ownership and participation changes visible within seconds.
import { type CertificateRecord, certificateKey, type Registry } from '../store/registry.js'
import type { AclLookups } from './acl.js'

interface DeviceKeysFollower {
  forget(deviceId: string): void
  clear(): void
  warm(deviceId: string): void
}

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
  clear(): void {
    this.map.clear()
  }
}

/** Largest batch of certificate look-ups sent in one query. */
const CERT_BATCH_MAX = 1000

/**
 * The certificate check of every mTLS connect, batched and briefly cached. At a race start thousands of trackers
 * connect within seconds; a query each queued behind the pool, timed out and cost the device a CONNACK 3 and a
 * backoff. Here the connects that arrive while a query is out wait for the next one, which asks for all of them at
 * once, so one pool connection serves any connect rate.
 *
 * Revocation: only known devices are cached, for `ttlMs` (10 s by default), keyed by device and fingerprint.
 * forget() (a revocation or re-registration through this broker) drops the device at once, and a query that was
 * already out when it happened is asked again. A revocation or re-registration written to the database by another
 * process reaches forget() through the control plane's notification (src/cluster/control-plane.ts), within
 * milliseconds; the TTL bounds what a lost notification could leave (the control plane flushes on reconnect anyway).
 */
export class CertificateLookups {
  /** deviceId → fingerprint → verdict: forget() drops a device in O(1), whatever the cache holds */
  private readonly cache = new Map<string, Map<string, { rec: CertificateRecord; exp: number }>>()
  private cached = 0
  private queued = new Map<string, { deviceId: string; fingerprint: string; waiters: Waiter[] }>()
  private busy = false
  /** bumped by forget(): a query started before is asked again */
  private epoch = 0

  constructor(
    private readonly registry: Registry,
    private readonly ttlMs = 10_000,
    private readonly max = 200_000,
  ) {}

  /** The registry's record for this device and certificate; null when the device is unknown. */
  lookup(deviceId: string, fingerprint: string): Promise<CertificateRecord | null> {
    const key = certificateKey(deviceId, fingerprint)
    const hit = this.cache.get(deviceId)?.get(fingerprint)
    if (hit && hit.exp > Date.now()) return Promise.resolve(hit.rec)
    return new Promise((resolve, reject) => {
      const q = this.queued.get(key)
      if (q) q.waiters.push({ resolve, reject })
      else this.queued.set(key, { deviceId, fingerprint, waiters: [{ resolve, reject }] })
      // Connects arriving in the same turn of the event loop share the query.
      if (!this.busy) {
        this.busy = true
        setImmediate(() => void this.drain())
      }
    })
  }

  forget(deviceId: string): void {
    this.epoch++
    const entries = this.cache.get(deviceId)
    if (entries) {
      this.cached -= entries.size
      this.cache.delete(deviceId)
    }
  }

  /** Drops every verdict (the control plane may have missed a change); a query already out is asked again. */
  clear(): void {
    this.epoch++
    this.cache.clear()
    this.cached = 0
  }

  private async drain(): Promise<void> {
    while (this.queued.size > 0) {
      const batch = [...this.queued.entries()].slice(0, CERT_BATCH_MAX)
      for (const [key] of batch) this.queued.delete(key)
      const epoch = this.epoch
      try {
        const found = await this.registry.devicesForCertificates(batch.map(([, q]) => q))
        if (epoch !== this.epoch) {
          // A device was revoked or re-registered while this query was out: its answer may predate that. Ask again
          // (the revocation is committed by now), rather than let a connect in on a stale verdict.
          for (const [key, q] of batch) {
            const again = this.queued.get(key)
            if (again) again.waiters.push(...q.waiters)
            else this.queued.set(key, q)
          }
          continue
        }
        const exp = Date.now() + this.ttlMs
        if (this.cached + found.size > this.max) {
          this.cache.clear()
          this.cached = 0
        }
        for (const [key, q] of batch) {
          const rec = found.get(key) ?? null
          if (rec) {
            let entries = this.cache.get(q.deviceId)
            if (!entries) {
              entries = new Map()
              this.cache.set(q.deviceId, entries)
            }
            if (!entries.has(q.fingerprint)) this.cached++
            entries.set(q.fingerprint, { rec, exp })
          }
          for (const w of q.waiters) w.resolve(rec)
        }
      } catch (err) {
        for (const [, q] of batch) for (const w of q.waiters) w.reject(err as Error)
      }
    }
    this.busy = false
  }
}

interface Waiter {
  resolve(rec: CertificateRecord | null): void
  reject(err: Error): void
}

export class CachedLookups implements AclLookups {
  private readonly owners = new TtlCache<{ userId: string; deviceKey: number } | null>()
  private readonly participants = new TtlCache<boolean>()
  private readonly publicEvents = new TtlCache<boolean>()
  /** the certificate check at mTLS connect */
  readonly certificates: CertificateLookups

  constructor(
    private readonly registry: Registry,
    private readonly ttlMs = 30_000,
    certificateTtlMs = 10_000,
  ) {
    this.certificates = new CertificateLookups(registry, certificateTtlMs)
  }

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

  /** the readings pipeline's per-device keys (src/identity/device-keys.ts): invalidated with the verdicts below */
  private deviceKeys: DeviceKeysFollower | null = null

  followDeviceKeys(keys: DeviceKeysFollower): void {
    this.deviceKeys = keys
  }

  /** A device authenticated: its pipeline keys are loaded now, while the database answers (its batches follow). */
  warmDevice(deviceId: string): void {
    this.deviceKeys?.warm(deviceId)
  }

  /** A device was revoked or re-registered (here or, told by the control plane, anywhere): its verdicts go at once. */
  forgetDevice(deviceId: string): void {
    this.owners.delete(deviceId)
    this.certificates.forget(deviceId)
    this.deviceKeys?.forget(deviceId)
  }

  forgetParticipant(eventId: string, userId: string): void {
    this.participants.delete(`${eventId}\u0000${userId}`)
  }

  forgetEvent(eventId: string): void {
    this.publicEvents.delete(eventId)
  }

  /** Everything goes (src/cluster/control-plane.ts: notifications may have been missed). */
  flush(): void {
    this.owners.clear()
    this.participants.clear()
    this.publicEvents.clear()
    this.certificates.clear()
    this.deviceKeys?.clear()
  }
}

// A device's own keys, cached per device for the readings pipeline (src/pipeline/envelope.ts): the public key parsed
// from its registered certificate, its `signed readings required` policy and its unwrapped content key. Parsing a
// certificate costs far more than verifying one signature, so it is done once per device, not per batch.
//
// Invalidation: CachedLookups.forgetDevice (a revocation, re-registration or policy change through this broker, or
// any such change written elsewhere, told by the control plane: migration 0016 extends its device trigger) drops the
// entry at once; a load that was under way when that happened is not cached. The TTL bounds what a lost notification
// could leave, as for the certificate verdicts.
import type { BrokerConfig } from '../../broker.config.js'
import { createPublicKey, type KeyObject, X509Certificate } from 'node:crypto'
import type { SecretKey } from '../ops/keys.js'
import type { DeviceKeyMaterial, DeviceKeySource } from '../pipeline/envelope.js'
import { isConnectionError, type Queryable } from '../store/db.js'
import { loadDeviceWrapKey, unwrapContentKey } from './content-key.js'

const NOTHING: DeviceKeyMaterial = Object.freeze({ verifyKey: null, signedRequired: false, contentKey: null })

/** The public key of a PEM certificate; null when it does not parse (never trusted then, refused as unknown). */
export function certificateKey(certPem: string): KeyObject | null {
  try {
    return createPublicKey(new X509Certificate(certPem).publicKey.export({ format: 'pem', type: 'spki' }))
  } catch {
    return null
  }
}

/** Largest number of devices loaded in one query. */
const LOAD_BATCH_MAX = 1000

interface Loading {
  waiters: { resolve(m: DeviceKeyMaterial): void; reject(e: unknown): void }[]
}

/**
 * Misses are loaded together: the first batches of thousands of trackers connecting at a race start arrive within
 * seconds, and a query each would queue behind the pool (as the certificate checks did: src/identity/lookups.ts).
 * Misses arriving while a query is out wait for the next one, which asks for all of them at once.
 */
export class DeviceKeyCache implements DeviceKeySource {
  private readonly cache = new Map<string, { m: DeviceKeyMaterial; exp: number }>()
  private queued = new Map<string, Loading>()
  private busy = false
  /** bumped by forget()/clear(): a load started before is not cached */
  private epoch = 0
  /** certificates parsed (a figure for tests and the bench: one per device per change, not per batch) */
  parsed = 0

  constructor(
    private readonly db: Queryable,
    /** the server's wrap key, asked for only when a device has a content key */
    private readonly wrapKey: () => SecretKey,
    private readonly ttlMs = 60_000,
    private readonly max = 200_000,
  ) {}

  get(deviceId: string): DeviceKeyMaterial | Promise<DeviceKeyMaterial> {
    const hit = this.cache.get(deviceId)
    if (hit && hit.exp > Date.now()) return hit.m
    return new Promise((resolve, reject) => {
      const q = this.queued.get(deviceId)
      if (q) q.waiters.push({ resolve, reject })
      else this.queued.set(deviceId, { waiters: [{ resolve, reject }] })
      if (!this.busy) {
        this.busy = true
        setImmediate(() => void this.drain())
      }
    })
  }

  /** Loads a device's keys ahead of its first batch (at its CONNECT, while the database answers); errors are ignored. */
  warm(deviceId: string): void {
    if (this.cache.has(deviceId)) return
    void Promise.resolve(this.get(deviceId)).catch(() => {})
  }

  forget(deviceId: string): void {
    this.epoch++
    this.cache.delete(deviceId)
  }

  clear(): void {
    this.epoch++
    this.cache.clear()
  }

  private async drain(): Promise<void> {
    while (this.queued.size > 0) {
      const batch = [...this.queued.entries()].slice(0, LOAD_BATCH_MAX)
      for (const [id] of batch) this.queued.delete(id)
      const epoch = this.epoch
      try {
        const loaded = await this.load(batch.map(([id]) => id))
        for (const [id, q] of batch) {
          const m = loaded.get(id) ?? NOTHING
          if (m instanceof Error) {
            for (const w of q.waiters) w.reject(m)
            continue
          }
          // A change heard while the query was out may not be in its answer: not cached, asked again next time.
          if (epoch === this.epoch) {
            if (this.cache.size >= this.max) this.cache.clear()
            this.cache.set(id, { m, exp: Date.now() + this.ttlMs })
          }
          for (const w of q.waiters) w.resolve(m)
        }
      } catch (err) {
        // The database is unreachable: an expired entry is still the device's material (a revocation or policy
        // change would have dropped it: forget()), so its batches queue for the commit as before the outage instead
        // of being refused for as long as it lasts.
        const unreachable = isConnectionError(err)
        for (const [id, q] of batch) {
          const stale = unreachable ? this.cache.get(id) : undefined
          for (const w of q.waiters) stale ? w.resolve(stale.m) : w.reject(err)
        }
      }
    }
    this.busy = false
  }

  /** Each device's material, or the error that keeps it from being used (its content key does not unwrap). */
  private async load(deviceIds: readonly string[]): Promise<Map<string, DeviceKeyMaterial | Error>> {
    const res = await this.db.query<{
      device_id: string
      cert_pem: string | null
      signed_required: boolean
      content_key: Uint8Array | null
      revoked: boolean
    }>(
      `SELECT device_id, cert_pem, signed_required, content_key, revoked_at IS NOT NULL AS revoked
       FROM devices WHERE device_id = ANY($1::text[])`,
      [deviceIds],
    )
    const out = new Map<string, DeviceKeyMaterial | Error>()
    for (const r of res.rows) {
      // A revoked device's key verifies nothing; its policy still holds.
      let verifyKey: KeyObject | null = null
      if (r.cert_pem && !r.revoked) {
        this.parsed++
        verifyKey = certificateKey(r.cert_pem)
      }
      let contentKey: Buffer | null = null
      if (r.content_key && !r.revoked) {
        try {
          contentKey = unwrapContentKey(this.wrapKey(), r.device_id, r.content_key)
        } catch (err) {
          // Another process's wrap key (or an altered row) is the operator's to fix: the device's QoS 1 batches
          // are refused unacked meanwhile (keys_unavailable, logged with this message), so none is lost.
          out.set(r.device_id, err instanceof Error ? err : new Error(String(err)))
          continue
        }
      }
      out.set(r.device_id, { verifyKey, signedRequired: r.signed_required, contentKey })
    }
    return out
  }
}

/** The broker's cache, following the registry look-ups' invalidations (revocation, re-registration, control plane). */
export function openDeviceKeys(
  db: Queryable,
  config: Pick<BrokerConfig, 'dataDir' | 'privacy'>,
  lookups: { followDeviceKeys(k: DeviceKeyCache): void },
): DeviceKeyCache {
  let wrap: SecretKey | null = null
  const keys = new DeviceKeyCache(db, () => {
    wrap ??= loadDeviceWrapKey(config)
    return wrap
  })
  lookups.followDeviceKeys(keys)
  return keys
}

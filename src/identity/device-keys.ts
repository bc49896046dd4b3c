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
import type { Queryable } from '../store/db.js'
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

export class DeviceKeyCache implements DeviceKeySource {
  private readonly cache = new Map<string, { m: DeviceKeyMaterial; exp: number }>()
  private readonly loading = new Map<string, Promise<DeviceKeyMaterial>>()
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
    const pending = this.loading.get(deviceId)
    if (pending) return pending
    const epoch = this.epoch
    const p = this.load(deviceId).then(
      (m) => {
        this.loading.delete(deviceId)
        if (epoch === this.epoch) {
          if (this.cache.size >= this.max) this.cache.clear()
          this.cache.set(deviceId, { m, exp: Date.now() + this.ttlMs })
        }
        return m
      },
      (err: unknown) => {
        this.loading.delete(deviceId)
        throw err
      },
    )
    this.loading.set(deviceId, p)
    return p
  }

  forget(deviceId: string): void {
    this.epoch++
    this.cache.delete(deviceId)
    this.loading.delete(deviceId)
  }

  clear(): void {
    this.epoch++
    this.cache.clear()
    this.loading.clear()
  }

  private async load(deviceId: string): Promise<DeviceKeyMaterial> {
    const res = await this.db.query<{
      cert_pem: string | null
      signed_required: boolean
      content_key: Buffer | null
      revoked: boolean
    }>(
      `SELECT cert_pem, signed_required, content_key, revoked_at IS NOT NULL AS revoked
       FROM devices WHERE device_id = $1`,
      [deviceId],
    )
    const r = res.rows[0]
    if (!r) return NOTHING
    // A revoked device's key verifies nothing; its policy still holds.
    let verifyKey: KeyObject | null = null
    if (r.cert_pem && !r.revoked) {
      this.parsed++
      verifyKey = certificateKey(r.cert_pem)
    }
    const contentKey = r.content_key && !r.revoked ? unwrapContentKey(this.wrapKey(), deviceId, r.content_key) : null
    return { verifyKey, signedRequired: r.signed_required, contentKey }
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

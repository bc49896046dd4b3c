// The device registry: users (pseudonymous), devices and their certificates, events and participants.
import type { Queryable } from './db.js'

export interface DeviceRecord {
  deviceKey: number
  deviceId: string
  userId: string
  fingerprint: string | null
  revoked: boolean
}

export class RegistryError extends Error {}

export interface EventRecord {
  eventId: string
  name: string | null
  isPublic: boolean
  distanceM: number | null
  startsAt: Date | null
}

export class Registry {
  constructor(private readonly db: Queryable) {}

  async ensureUser(userId: string, profile: { birthYear?: number } = {}): Promise<void> {
    await this.db.query(
      `INSERT INTO users (user_id, birth_year) VALUES ($1, $2)
       ON CONFLICT (user_id) DO UPDATE SET birth_year = coalesce(EXCLUDED.birth_year, users.birth_year)`,
      [userId, profile.birthYear ?? null],
    )
  }

  /** Registers (or re-registers with a new certificate) a device for its owner; a device never changes owner here. */
  async registerDevice(d: {
    deviceId: string
    userId: string
    fingerprint: string
    serial?: string
    notAfter?: Date
  }): Promise<number> {
    await this.ensureUser(d.userId)
    const existing = await this.device(d.deviceId)
    if (existing && existing.userId !== d.userId) {
      throw new RegistryError(`device ${d.deviceId} is registered to another user`)
    }
    const res = await this.db.query<{ device_key: number }>(
      `INSERT INTO devices (device_id, user_id, cert_fingerprint, cert_serial, cert_not_after)
       VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (device_id) DO UPDATE SET cert_fingerprint = EXCLUDED.cert_fingerprint,
         cert_serial = EXCLUDED.cert_serial, cert_not_after = EXCLUDED.cert_not_after, revoked_at = NULL
       RETURNING device_key`,
      [d.deviceId, d.userId, d.fingerprint, d.serial ?? null, d.notAfter ?? null],
    )
    return Number(res.rows[0]?.device_key)
  }

  /** Revokes the device's current certificate; returns false when the device is unknown. */
  async revokeDevice(deviceId: string): Promise<boolean> {
    const dev = await this.device(deviceId)
    if (!dev) return false
    if (dev.fingerprint) {
      await this.db.query('INSERT INTO revoked_certs (fingerprint, device_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
        dev.fingerprint,
        deviceId,
      ])
    }
    await this.db.query('UPDATE devices SET revoked_at = now() WHERE device_id = $1', [deviceId])
    return true
  }

  async device(deviceId: string): Promise<DeviceRecord | null> {
    const res = await this.db.query<{
      device_key: number
      device_id: string
      user_id: string
      cert_fingerprint: string | null
      revoked_at: Date | null
    }>('SELECT device_key, device_id, user_id, cert_fingerprint, revoked_at FROM devices WHERE device_id = $1', [
      deviceId,
    ])
    const r = res.rows[0]
    if (!r) return null
    return {
      deviceKey: Number(r.device_key),
      deviceId: r.device_id,
      userId: r.user_id,
      fingerprint: r.cert_fingerprint,
      revoked: r.revoked_at !== null,
    }
  }

  /** The device and whether this certificate was ever revoked, in one round trip (every mTLS connect asks). */
  async deviceForCertificate(
    deviceId: string,
    fingerprint: string,
  ): Promise<(DeviceRecord & { fingerprintRevoked: boolean }) | null> {
    const res = await this.db.query<{
      device_key: number
      user_id: string
      cert_fingerprint: string | null
      revoked: boolean
      fp_revoked: boolean
    }>(
      `SELECT d.device_key, d.user_id, d.cert_fingerprint, d.revoked_at IS NOT NULL AS revoked,
              EXISTS (SELECT 1 FROM revoked_certs r WHERE r.fingerprint = $2) AS fp_revoked
       FROM devices d WHERE d.device_id = $1`,
      [deviceId, fingerprint],
    )
    const r = res.rows[0]
    if (!r) return null
    return {
      deviceKey: Number(r.device_key),
      deviceId,
      userId: r.user_id,
      fingerprint: r.cert_fingerprint,
      revoked: r.revoked,
      fingerprintRevoked: r.fp_revoked,
    }
  }

  async isRevokedFingerprint(fingerprint: string): Promise<boolean> {
    const res = await this.db.query('SELECT 1 FROM revoked_certs WHERE fingerprint = $1', [fingerprint])
    return res.rows.length > 0
  }

  async createEvent(e: { eventId: string; name?: string; isPublic?: boolean; distanceM?: number; startsAt?: Date }) {
    await this.db.query(
      `INSERT INTO events (event_id, name, is_public, distance_m, starts_at) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT (event_id) DO UPDATE SET name = coalesce(EXCLUDED.name, events.name), is_public = EXCLUDED.is_public,
         distance_m = coalesce(EXCLUDED.distance_m, events.distance_m), starts_at = coalesce(EXCLUDED.starts_at, events.starts_at)`,
      [e.eventId, e.name ?? null, e.isPublic ?? false, e.distanceM ?? null, e.startsAt ?? null],
    )
  }

  async event(eventId: string): Promise<EventRecord | null> {
    const res = await this.db.query<{
      event_id: string
      name: string | null
      is_public: boolean
      distance_m: number | null
      starts_at: Date | null
    }>('SELECT event_id, name, is_public, distance_m, starts_at FROM events WHERE event_id = $1', [eventId])
    const r = res.rows[0]
    return r
      ? { eventId: r.event_id, name: r.name, isPublic: r.is_public, distanceM: r.distance_m, startsAt: r.starts_at }
      : null
  }

  async joinEvent(eventId: string, userId: string, opts: { consentLeaderboard?: boolean; bib?: string } = {}) {
    if (!(await this.event(eventId))) throw new RegistryError(`event ${eventId} does not exist`)
    await this.ensureUser(userId)
    const consent = opts.consentLeaderboard ?? false
    await this.db.query(
      `INSERT INTO participants (event_id, user_id, bib, consent_leaderboard) VALUES ($1, $2, $3, $4)
       ON CONFLICT (event_id, user_id) DO UPDATE SET bib = coalesce(EXCLUDED.bib, participants.bib),
         consent_leaderboard = EXCLUDED.consent_leaderboard`,
      [eventId, userId, opts.bib ?? null, consent],
    )
    await this.db.query('INSERT INTO consents (user_id, purpose, granted, source) VALUES ($1, $2, $3, $4)', [
      userId,
      `leaderboard:${eventId}`,
      consent,
      'event join',
    ])
  }

  async isParticipant(eventId: string, userId: string): Promise<boolean> {
    const res = await this.db.query('SELECT 1 FROM participants WHERE event_id = $1 AND user_id = $2', [
      eventId,
      userId,
    ])
    return res.rows.length > 0
  }
}

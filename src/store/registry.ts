// The device registry: users (pseudonymous), devices and their certificates, events and participants.
import type { Db, Queryable } from './db.js'

export interface DeviceRecord {
  deviceKey: number
  deviceId: string
  userId: string
  fingerprint: string | null
  revoked: boolean
}

export class RegistryError extends Error {}

/** A device as seen through a certificate presented at connect: fingerprintRevoked = that certificate was revoked. */
export type CertificateRecord = DeviceRecord & { fingerprintRevoked: boolean }

export function certificateKey(deviceId: string, fingerprint: string): string {
  return `${deviceId}\u0000${fingerprint}`
}

export interface EventRecord {
  eventId: string
  name: string | null
  isPublic: boolean
  distanceM: number | null
  startsAt: Date | null
}

export interface DeviceRegistration {
  deviceId: string
  userId: string
  fingerprint: string
  serial?: string
  notAfter?: Date
  /** the certificate itself (PEM): its public key verifies the device's signed readings (migration 0016) */
  certPem?: string
  /** the device's `signed readings required` policy; unset keeps the stored one (false for a new device) */
  signedRequired?: boolean
}

export interface EventJoin {
  userId: string
  consentLeaderboard?: boolean
  bib?: string
}

/** Last entry wins for a repeated key: one statement may not upsert the same row twice. */
function lastByKey<T>(xs: readonly T[], key: (x: T) => string): T[] {
  return [...new Map(xs.map((x) => [key(x), x])).values()]
}

/** Bulk registrations at least this large refresh the planner statistics of the tables they grew (see below). */
const ANALYZE_AFTER_ROWS = 500

export class Registry {
  constructor(private readonly db: Db | Queryable) {}

  /** The statements of fn on one connection in one transaction where the store offers it. */
  private atomically<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    return 'transaction' in this.db ? this.db.transaction(fn) : fn(this.db)
  }

  /**
   * Creates the user or updates the profile fields given (others are kept). `timeZone` must already be a valid IANA
   * name (src/ops/people.ts normalizeTimeZone). Returns true when the user was created.
   */
  async ensureUser(userId: string, profile: { birthYear?: number; timeZone?: string } = {}): Promise<boolean> {
    const res = await this.db.query<{ inserted: boolean }>(
      `INSERT INTO users (user_id, birth_year, time_zone) VALUES ($1, $2, coalesce($3::text, 'UTC'))
       ON CONFLICT (user_id) DO UPDATE SET birth_year = coalesce(EXCLUDED.birth_year, users.birth_year),
         time_zone = CASE WHEN $3::text IS NULL THEN users.time_zone ELSE EXCLUDED.time_zone END
       RETURNING (xmax = 0) AS inserted`,
      [userId, profile.birthYear ?? null, profile.timeZone ?? null],
    )
    return res.rows[0]?.inserted === true
  }

  /** Registers (or re-registers with a new certificate) a device for its owner; a device never changes owner here. */
  async registerDevice(d: DeviceRegistration): Promise<number> {
    const keys = await this.registerDevices([d])
    return keys.get(d.deviceId) as number
  }

  /**
   * Registers many devices and their owners in a few statements (fleet provisioning, the simulator's swarms), all or
   * nothing, with registerDevice's rules: a device never changes owner; re-registering sets its certificate and lifts
   * a device revocation (a revoked certificate stays refused by revoked_certs). Rows that would not change are not
   * rewritten, so provisioning the same fleet again is a no-op. `users` sets owners' profiles; owners not listed are
   * created bare. Returns each device's key.
   */
  async registerDevices(
    devices: readonly DeviceRegistration[],
    users: readonly { userId: string; birthYear?: number }[] = [],
  ): Promise<Map<string, number>> {
    // deviceId → its owner: refuses a device listed with two owners, then checks the stored rows against it.
    const ownerOf = new Map<string, string>()
    for (const d of devices) {
      const seen = ownerOf.get(d.deviceId)
      if (seen !== undefined && seen !== d.userId) {
        throw new RegistryError(`device ${d.deviceId} is listed twice with different owners (${seen}, ${d.userId})`)
      }
      ownerOf.set(d.deviceId, d.userId)
    }
    const ds = lastByKey(devices, (d) => d.deviceId)
    const owners = new Map<string, number | null>(ds.map((d) => [d.userId, null]))
    for (const u of users) owners.set(u.userId, u.birthYear ?? null)
    const ids = ds.map((d) => d.deviceId)
    const { keys, created } = await this.atomically(async (q) => {
      await q.query(
        `INSERT INTO users (user_id, birth_year) SELECT * FROM unnest($1::text[], $2::smallint[])
         ON CONFLICT (user_id) DO UPDATE SET birth_year = EXCLUDED.birth_year
           WHERE EXCLUDED.birth_year IS NOT NULL AND users.birth_year IS DISTINCT FROM EXCLUDED.birth_year`,
        [[...owners.keys()], [...owners.values()]],
      )
      const ins = await q.query<{ inserted: boolean }>(
        // cert_pem: the one given, else the stored one while the certificate stays the same (a new certificate
        // without its PEM leaves nothing to verify signed readings with). signed_required: set below when given.
        `INSERT INTO devices (device_id, user_id, cert_fingerprint, cert_serial, cert_not_after, cert_pem,
                              signed_required)
         SELECT id, u, fp, ser, na, pem, coalesce(req, false)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::boolean[])
           AS i(id, u, fp, ser, na, pem, req)
         ON CONFLICT (device_id) DO UPDATE SET cert_fingerprint = EXCLUDED.cert_fingerprint,
           cert_serial = EXCLUDED.cert_serial, cert_not_after = EXCLUDED.cert_not_after, revoked_at = NULL,
           cert_pem = CASE WHEN EXCLUDED.cert_pem IS NOT NULL THEN EXCLUDED.cert_pem
                           WHEN devices.cert_fingerprint = EXCLUDED.cert_fingerprint THEN devices.cert_pem END
         WHERE devices.user_id = EXCLUDED.user_id
           AND (devices.revoked_at IS NOT NULL
             OR (devices.cert_fingerprint, devices.cert_serial, devices.cert_not_after)
                IS DISTINCT FROM (EXCLUDED.cert_fingerprint, EXCLUDED.cert_serial, EXCLUDED.cert_not_after)
             OR (EXCLUDED.cert_pem IS NOT NULL AND devices.cert_pem IS DISTINCT FROM EXCLUDED.cert_pem))
         RETURNING (xmax = 0) AS inserted`,
        [
          ids,
          ds.map((d) => d.userId),
          ds.map((d) => d.fingerprint),
          ds.map((d) => d.serial ?? null),
          ds.map((d) => d.notAfter ?? null),
          ds.map((d) => d.certPem ?? null),
          ds.map((d) => d.signedRequired ?? null),
        ],
      )
      const policies = ds.filter((d) => d.signedRequired !== undefined)
      if (policies.length > 0) {
        // Only the owner's devices, and only where it changes (a no-op re-registration raises no notification).
        await q.query(
          `UPDATE devices d SET signed_required = i.req
           FROM unnest($1::text[], $2::text[], $3::boolean[]) AS i(id, u, req)
           WHERE d.device_id = i.id AND d.user_id = i.u AND d.signed_required IS DISTINCT FROM i.req`,
          [
            policies.map((d) => d.deviceId),
            policies.map((d) => d.userId),
            policies.map((d) => d.signedRequired as boolean),
          ],
        )
      }
      // Checked after the upsert, in its transaction: a device another user registered concurrently is seen here
      // (the upsert skipped it) and the whole registration rolls back.
      const rows = await q.query<{ device_id: string; device_key: number; user_id: string }>(
        'SELECT device_id, device_key, user_id FROM devices WHERE device_id = ANY($1::text[])',
        [ids],
      )
      const keys = new Map<string, number>()
      for (const r of rows.rows) {
        if (ownerOf.get(r.device_id) !== r.user_id) {
          throw new RegistryError(`device ${r.device_id} is registered to another user`)
        }
        keys.set(r.device_id, Number(r.device_key))
      }
      return { keys, created: ins.rows.filter((r) => r.inserted).length }
    })
    // A swarm registered at once leaves the planner's statistics describing the nearly empty tables of before until
    // autovacuum's next round (up to a minute); per-user queries planned in that gap chose sequential scans of the
    // telemetry tables. ANALYZE of these small tables takes milliseconds.
    if (created >= ANALYZE_AFTER_ROWS) await this.db.query('ANALYZE users, devices')
    return keys
  }

  /** Sets the device's `signed readings required` policy; false when the device is unknown. */
  async setSignedRequired(deviceId: string, required: boolean): Promise<boolean> {
    const res = await this.db.query('UPDATE devices SET signed_required = $2 WHERE device_id = $1', [
      deviceId,
      required,
    ])
    return res.rowCount > 0
  }

  /** Stores the device's content key, already wrapped under the server's key; false when the device is unknown. */
  async setWrappedContentKey(deviceId: string, wrapped: Buffer | null): Promise<boolean> {
    const res = await this.db.query('UPDATE devices SET content_key = $2 WHERE device_id = $1', [deviceId, wrapped])
    return res.rowCount > 0
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

  /**
   * The devices behind certificates presented at connect, and whether each certificate was ever revoked, in one round
   * trip, keyed by certificateKey; unknown devices are absent. A connect storm of thousands of devices costs a few of
   * these instead of a query per device.
   */
  async devicesForCertificates(
    certs: readonly { deviceId: string; fingerprint: string }[],
  ): Promise<Map<string, CertificateRecord>> {
    const res = await this.db.query<{
      device_id: string
      fp: string
      device_key: number
      user_id: string
      cert_fingerprint: string | null
      revoked: boolean
      fp_revoked: boolean
    }>(
      `SELECT i.device_id, i.fp, d.device_key, d.user_id, d.cert_fingerprint, d.revoked_at IS NOT NULL AS revoked,
              EXISTS (SELECT 1 FROM revoked_certs r WHERE r.fingerprint = i.fp) AS fp_revoked
       FROM unnest($1::text[], $2::text[]) AS i(device_id, fp) JOIN devices d USING (device_id)`,
      [certs.map((c) => c.deviceId), certs.map((c) => c.fingerprint)],
    )
    const out = new Map<string, CertificateRecord>()
    for (const r of res.rows) {
      out.set(certificateKey(r.device_id, r.fp), {
        deviceKey: Number(r.device_key),
        deviceId: r.device_id,
        userId: r.user_id,
        fingerprint: r.cert_fingerprint,
        revoked: r.revoked,
        fingerprintRevoked: r.fp_revoked,
      })
    }
    return out
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
    await this.joinEvents(eventId, [{ userId, ...opts }])
  }

  /**
   * Joins users to an event (creating bare users as needed) in a few statements. The consent history gets a row when
   * a participant's leaderboard consent is first given or refused and whenever it changes, not when a join repeats
   * it: provisioning the same runners again appends nothing. Returns the consent rows appended. Those rows are the
   * per-event opt-in (purpose leaderboard, event_id set, source event-join:<event>, versioned per user and event);
   * how they combine with the user-level purpose: src/ops/consent.ts.
   */
  async joinEvents(eventId: string, joins: readonly EventJoin[]): Promise<number> {
    if (!(await this.event(eventId))) throw new RegistryError(`event ${eventId} does not exist`)
    const js = lastByKey(joins, (j) => j.userId)
    const userIds = js.map((j) => j.userId)
    const appended = await this.atomically(async (q) => {
      await q.query('INSERT INTO users (user_id) SELECT unnest($1::text[]) ON CONFLICT (user_id) DO NOTHING', [userIds])
      // One statement: every part sees the participants as they were before it, so `prev` is the consent replaced.
      const res = await q.query(
        `WITH i AS (SELECT * FROM unnest($2::text[], $3::boolean[], $4::text[]) AS i(user_id, consent, bib)),
         prev AS (SELECT p.user_id, p.consent_leaderboard FROM participants p JOIN i USING (user_id) WHERE p.event_id = $1),
         up AS (
           INSERT INTO participants (event_id, user_id, bib, consent_leaderboard) SELECT $1, user_id, bib, consent FROM i
           ON CONFLICT (event_id, user_id) DO UPDATE SET bib = coalesce(EXCLUDED.bib, participants.bib),
             consent_leaderboard = EXCLUDED.consent_leaderboard
           WHERE participants.consent_leaderboard IS DISTINCT FROM EXCLUDED.consent_leaderboard
              OR (EXCLUDED.bib IS NOT NULL AND participants.bib IS DISTINCT FROM EXCLUDED.bib))
         INSERT INTO consents (user_id, purpose, event_id, granted, version, source)
         SELECT i.user_id, 'leaderboard', $1, i.consent,
           coalesce((SELECT max(c.version) FROM consents c
                     WHERE c.user_id = i.user_id AND c.event_id = $1 AND c.event_id IS NOT NULL), 0) + 1,
           'event-join:' || $1
         FROM i LEFT JOIN prev USING (user_id)
         WHERE prev.consent_leaderboard IS DISTINCT FROM i.consent`,
        [eventId, userIds, js.map((j) => j.consentLeaderboard ?? false), js.map((j) => j.bib ?? null)],
      )
      return res.rowCount
    })
    if (appended >= ANALYZE_AFTER_ROWS) await this.db.query('ANALYZE participants')
    return appended
  }

  async isParticipant(eventId: string, userId: string): Promise<boolean> {
    const res = await this.db.query('SELECT 1 FROM participants WHERE event_id = $1 AND user_id = $2', [
      eventId,
      userId,
    ])
    return res.rows.length > 0
  }
}

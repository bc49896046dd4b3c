// Provisioning at fleet scale and what a race start then asks of the broker: bulk registration (admin RPC and
// registry) and its idempotency (no rewritten rows, no repeated consent history); the batched, cached certificate
// check at mTLS connect, honouring revocation; the alert engine loading thousands of runners' state at first sight.
// Real PostgreSQL, real TLS.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CertificateLookups } from '../../src/identity/lookups.js'
import { testConsent } from '../helpers/consent.js'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import { OutputEngine } from '../../src/outputs/engine.js'
import { MemoryLeaderboard } from '../../src/outputs/leaderboard.js'
import { DERIVED_METRICS } from '../../src/pipeline/derive.js'
import { METRICS } from '../../src/pipeline/types.js'
import type { Db, Queryable } from '../../src/store/db.js'
import { openPostgres } from '../../src/store/postgres.js'
import { certificateKey, Registry } from '../../src/store/registry.js'
import {
  connackCode,
  connectDevice,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'

let tb: TestBroker
/** A second connection to the broker's database, as another process (the CLI, another broker node) would have. */
let other: Db

beforeAll(async () => {
  // No timers of the broker's own that use the database (the statistics round every dp.intervalMs, audit checkpoints):
  // the round-trip count below would include whichever of them fell inside the counted calls.
  tb = await startTestBroker('postgres', { dp: { enabled: false }, privacy: { auditCheckpointMs: 0 } })
  other = openPostgres(tb.dbUrl as string, 2, createLogger('silent'))
})
afterAll(async () => {
  await other?.close()
  await tb?.stop()
})

async function rpc(body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
    method: 'POST',
    headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  return { status: res.status, body: (await res.json()) as Record<string, unknown> }
}

const fp = (i: number) => `FP:${String(i).padStart(6, '0')}`
const fleet = (prefix: string, users: number) => ({
  users: Array.from({ length: users }, (_, i) => ({ userId: `${prefix}-u${i}`, birthYear: 1970 + (i % 40) })),
  devices: Array.from({ length: users * 2 }, (_, i) => ({
    deviceId: `${prefix}-d${i}`,
    userId: `${prefix}-u${i >> 1}`,
    fingerprint: fp(i),
  })),
})

/**
 * Round trips (statements, and BEGIN/COMMIT of each transaction) the broker's store makes while fn runs. Nothing else
 * uses it meanwhile here: no device is connected, the output engine's tick does not touch the database, and the
 * broker's periodic database work (statistics, audit checkpoints) is switched off for this suite.
 */
async function roundTrips(fn: () => Promise<void>): Promise<number> {
  const db = tb.pg.db
  const { query, transaction } = db
  let n = 0
  const counted = (q: Queryable): Queryable => ({
    query<R>(sql: string, params?: unknown[]) {
      n++
      return q.query<R>(sql, params)
    },
  })
  db.query = counted({ query: query.bind(db) }).query
  db.transaction = <T>(body: (q: Queryable) => Promise<T>): Promise<T> => {
    n += 2
    return transaction.call(db, (q: Queryable) => body(counted(q))) as Promise<T>
  }
  try {
    await fn()
  } finally {
    db.query = query
    db.transaction = transaction
  }
  return n
}

async function count(sql: string, params: unknown[] = []): Promise<number> {
  const r = await other.query<{ n: string }>(sql, params)
  return Number(r.rows[0]?.n)
}

describe('bulk registration', () => {
  it('registers thousands of devices and runners in a few round trips, and again without a change', async () => {
    const f = fleet('bulk', 2000)
    const participants = f.users.map((u, i) => ({ userId: u.userId, consentLeaderboard: i % 5 !== 0 }))
    const trips = await roundTrips(async () => {
      const reg = await rpc({ op: 'registerDevices', ...f })
      expect(reg).toEqual({ status: 200, body: { devices: 4000 } })
      expect((await rpc({ op: 'createEvent', eventId: 'bulk-race' })).status).toBe(200)
      const joined = await rpc({ op: 'joinEvents', eventId: 'bulk-race', participants })
      expect(joined).toEqual({ status: 200, body: { consentsRecorded: 2000 } })
    })
    // A few round trips for 4,000 devices and 2,000 runners, where one per statement took minutes for a 10,000-device
    // swarm. Counted rather than timed: the time depends on how busy the machine is, the count does not. Each of the
    // three calls also writes its audit row (one chained append: a handful of statements, whatever the call's size).
    expect(trips).toBeLessThanOrEqual(20 + 3 * 6)

    expect(await count("SELECT count(*) AS n FROM devices WHERE device_id LIKE 'bulk-%'")).toBe(4000)
    expect(await count("SELECT count(*) AS n FROM users WHERE user_id LIKE 'bulk-%' AND birth_year IS NOT NULL")).toBe(
      2000,
    )
    expect(
      await count("SELECT count(*) AS n FROM participants WHERE event_id = 'bulk-race' AND consent_leaderboard", []),
    ).toBe(1600)
    // The planner's statistics were refreshed after the bulk insert (not left to autovacuum's next round).
    expect(await count("SELECT reltuples::int8 AS n FROM pg_class WHERE relname = 'devices'")).toBeGreaterThanOrEqual(
      4000,
    )

    // Provisioning the same swarm again writes nothing: rows keep their versions, consent history gets no rows.
    const versions =
      "SELECT md5(string_agg(xmin::text, ',' ORDER BY device_id)) AS n FROM devices WHERE device_id LIKE 'bulk-%'"
    const before = (await other.query<{ n: string }>(versions)).rows[0]?.n
    const consentsBefore = await count('SELECT count(*) AS n FROM consents')
    expect((await rpc({ op: 'registerDevices', ...f })).status).toBe(200)
    expect(await rpc({ op: 'joinEvents', eventId: 'bulk-race', participants })).toEqual({
      status: 200,
      body: { consentsRecorded: 0 },
    })
    expect((await other.query<{ n: string }>(versions)).rows[0]?.n).toBe(before)
    expect(await count('SELECT count(*) AS n FROM consents')).toBe(consentsBefore)

    // A changed consent is history: one row for each runner who changed their mind.
    const changed = participants.map((p, i) => (i < 3 ? { ...p, consentLeaderboard: !p.consentLeaderboard } : p))
    expect(await rpc({ op: 'joinEvents', eventId: 'bulk-race', participants: changed })).toEqual({
      status: 200,
      body: { consentsRecorded: 3 },
    })
    // The single-runner form follows the same rule.
    await tb.pg.registry.joinEvent('bulk-race', 'bulk-u0', { consentLeaderboard: changed[0]?.consentLeaderboard })
    expect(await count('SELECT count(*) AS n FROM consents')).toBe(consentsBefore + 3)
  })

  it('is all or nothing: a device of another user refuses the whole registration (409)', async () => {
    await tb.pg.registry.registerDevices([{ deviceId: 'taken-d0', userId: 'owner-a', fingerprint: fp(1) }])
    const res = await rpc({
      op: 'registerDevices',
      devices: [
        { deviceId: 'fresh-d0', userId: 'owner-b', fingerprint: fp(2) },
        { deviceId: 'taken-d0', userId: 'owner-b', fingerprint: fp(3) },
      ],
    })
    expect(res.status).toBe(409)
    expect(res.body.error).toMatch(/taken-d0 is registered to another user/)
    expect(await count("SELECT count(*) AS n FROM devices WHERE device_id = 'fresh-d0'")).toBe(0)
    expect((await tb.pg.registry.device('taken-d0'))?.fingerprint).toBe(fp(1))
  })

  it('refuses a device listed twice with different owners (409), and bad years or dates (400)', async () => {
    const twice = await rpc({
      op: 'registerDevices',
      devices: [
        { deviceId: 'dup-d0', userId: 'owner-c', fingerprint: fp(4) },
        { deviceId: 'dup-d0', userId: 'owner-d', fingerprint: fp(5) },
      ],
    })
    expect(twice.status).toBe(409)
    expect(twice.body.error).toMatch(/dup-d0 is listed twice/)
    expect(await tb.pg.registry.device('dup-d0')).toBeNull()
    const year = await rpc({
      op: 'registerDevices',
      devices: [{ deviceId: 'yr-d0', userId: 'owner-e', fingerprint: fp(6) }],
      users: [{ userId: 'owner-e', birthYear: 40000 }],
    })
    expect(year.status).toBe(400)
    const date = await rpc({
      op: 'registerDevice',
      deviceId: 'dt-d0',
      userId: 'owner-e',
      fingerprint: fp(7),
      notAfter: 'next tuesday',
    })
    expect(date.status).toBe(400)
  })

  it('joining an event that does not exist is refused', async () => {
    const res = await rpc({ op: 'joinEvents', eventId: 'no-such-race', participants: [{ userId: 'x' }] })
    expect(res.status).toBe(409)
  })
})

/** The broker's database through another connection, counting the statements sent. */
function counting(db: Db): Db & { statements: number } {
  const q = {
    ...db,
    statements: 0,
    query<R>(sql: string, params?: unknown[]) {
      q.statements++
      return db.query<R>(sql, params)
    },
  }
  return q
}

describe('certificate check at mTLS connect (batched, cached)', () => {
  it('a connect storm costs a query per batch, not per device', async () => {
    const f = fleet('storm', 500)
    await tb.pg.registry.registerDevices(f.devices)
    const db = counting(other)
    const lookups = new CertificateLookups(new Registry(db))
    const recs = await Promise.all(f.devices.map((d) => lookups.lookup(d.deviceId, d.fingerprint)))
    expect(recs.map((r) => r?.deviceId)).toEqual(f.devices.map((d) => d.deviceId))
    expect(recs.every((r, i) => r?.fingerprint === fp(i) && !r.revoked && !r.fingerprintRevoked)).toBe(true)
    expect(db.statements).toBeLessThanOrEqual(2)
    // Within the TTL a reconnect asks nothing; an unknown device is never cached.
    expect(await lookups.lookup('storm-d7', fp(7))).toMatchObject({ userId: 'storm-u3' })
    expect(await lookups.lookup('nobody', fp(1))).toBeNull()
    expect(db.statements).toBeLessThanOrEqual(3)
  })

  it('a revocation through the broker takes effect at the next connect, cached verdict or not', async () => {
    const d = await provisionDevice(tb, 'cached-1', 'carol')
    // Connect twice: the second is served from the cache.
    expect(await connackCode(connectDevice(tb, d))).toBe(0)
    expect(await connackCode(connectDevice(tb, d))).toBe(0)
    expect((await rpc({ op: 'revokeDevice', deviceId: 'cached-1' })).status).toBe(200)
    expect(await connackCode(connectDevice(tb, d))).toBe(5)
  })

  it('re-registering a device through the broker with a new certificate refuses the old one at once', async () => {
    const d = await provisionDevice(tb, 'cached-5', 'carol')
    expect(await connackCode(connectDevice(tb, d))).toBe(0) // the verdict is cached now
    const res = await rpc({ op: 'registerDevice', deviceId: 'cached-5', userId: 'carol', fingerprint: fp(46) })
    expect(res.status).toBe(200)
    expect(await connackCode(connectDevice(tb, d))).toBe(5)
  })

  it('a revocation written by another process is honoured once the entry expires (the TTL bound)', async () => {
    const registry = new Registry(other)
    const d = { deviceId: 'cached-2', fingerprint: fp(42) }
    await registry.registerDevices([{ ...d, userId: 'dave' }])
    const lookups = new CertificateLookups(registry, 300)
    expect(await lookups.lookup(d.deviceId, d.fingerprint)).toMatchObject({ revoked: false })
    await registry.revokeDevice(d.deviceId)
    // Within the TTL the cached verdict may still answer; after it, the revocation holds.
    await new Promise((r) => setTimeout(r, 350))
    expect(await lookups.lookup(d.deviceId, d.fingerprint)).toMatchObject({ revoked: true, fingerprintRevoked: true })
  })

  it('a verdict read while the device was being revoked is not used: the connect is asked again', async () => {
    const db = counting(other)
    // Holds the answer of the first look-up until the revocation has landed, as a slow query would.
    let release: () => void = () => {}
    const held = new Promise<void>((r) => {
      release = r
    })
    let hold = true
    const slow: Db = {
      ...db,
      async query<R>(sql: string, params?: unknown[]) {
        const r = await db.query<R>(sql, params)
        if (hold) {
          hold = false
          await held
        }
        return r
      },
    }
    const registry = new Registry(slow)
    await registry.registerDevices([{ deviceId: 'cached-3', userId: 'erin', fingerprint: fp(43) }])
    hold = true
    const lookups = new CertificateLookups(registry, 60_000)
    const before = db.statements
    const inFlight = lookups.lookup('cached-3', fp(43))
    await waitFor(() => db.statements === before + 1) // the batch is out and has read "not revoked"
    // A revocation through the broker commits and forgets the device while that answer is on its way.
    await new Registry(other).revokeDevice('cached-3')
    lookups.forget('cached-3')
    release()
    expect((await inFlight)?.revoked).toBe(true)
    expect(db.statements).toBe(before + 2)
    // The fresh verdict is cached.
    await lookups.lookup('cached-3', fp(43))
    expect(db.statements).toBe(before + 2)
  })

  it('keys by device and certificate: a new certificate of the same device is looked up afresh', async () => {
    const registry = new Registry(other)
    await registry.registerDevices([{ deviceId: 'cached-4', userId: 'fred', fingerprint: fp(44) }])
    const lookups = new CertificateLookups(registry, 60_000)
    expect((await lookups.lookup('cached-4', fp(44)))?.fingerprint).toBe(fp(44))
    await registry.registerDevices([{ deviceId: 'cached-4', userId: 'fred', fingerprint: fp(45) }])
    const rec = await lookups.lookup('cached-4', fp(45))
    expect(rec?.fingerprint).toBe(fp(45))
    expect(certificateKey('cached-4', fp(45))).not.toBe(certificateKey('cached-4', fp(44)))
  })
})

describe('alert engine at a race start', () => {
  it("loads hundreds of runners' state at first sight in batches, each with its distance so far", async () => {
    const n = 450
    const now = Date.now()
    const registry = new Registry(other)
    await registry.createEvent({ eventId: 'reload-race', distanceM: 42_195, startsAt: new Date(now - 3600_000) })
    const keys = await registry.registerDevices(
      Array.from({ length: n }, (_, i) => ({ deviceId: `reload-d${i}`, userId: `reload-u${i}`, fingerprint: fp(i) })),
    )
    await registry.joinEvents(
      'reload-race',
      Array.from({ length: n }, (_, i) => ({ userId: `reload-u${i}`, consentLeaderboard: true })),
    )
    // What a previous broker process committed: 3 × (i + 1) m in the race so far, and heart rate in the window.
    await other.query(
      `INSERT INTO samples (time, device_key, metric, value)
       SELECT to_timestamp(($3::float8 - m * 60000) / 1000.0), k.key, $4::smallint, k.i + 1
       FROM unnest($1::int[], $2::int[]) AS k(key, i), generate_series(1, 3) AS m
       UNION ALL
       SELECT to_timestamp(($3::float8 - m * 1000) / 1000.0), k.key, $5::smallint, 150 FROM unnest($1::int[], $2::int[]) AS k(key, i), generate_series(1, 5) AS m`,
      [
        [...keys.values()],
        [...keys.keys()].map((id) => Number(id.slice('reload-d'.length))),
        now,
        DERIVED_METRICS.distance,
        METRICS.hr,
      ],
    )
    const db = counting(other)
    const published: string[] = []
    const engine = new OutputEngine(
      db,
      new MemoryLeaderboard(),
      testConsent(db).consent,
      { publish: (topic) => published.push(topic) },
      createMetrics(),
      createLogger('silent'),
    )
    for (const [deviceId, deviceKey] of keys) {
      const userId = deviceId.replace('-d', '-u')
      engine.onCommitted({
        deviceId,
        deviceKey,
        userId,
        scalars: [{ metric: DERIVED_METRICS.distance, t: now, value: 10 }],
        positions: [],
      })
    }
    await engine.stop()
    for (const [deviceId] of keys) {
      const i = Number(deviceId.slice('reload-d'.length))
      expect(engine.distanceOf(`reload-u${i}`)).toBe(3 * (i + 1) + 10)
    }
    // A statement per user per query before; now a few per batch of users (8 with the batch's consent load).
    expect(db.statements).toBeLessThanOrEqual(3 * 8)
  })

  it('a state load that fails is tried again with the next batch, not skipped for the rest of the race', async () => {
    const now = Date.now()
    const registry = new Registry(other)
    await registry.createEvent({ eventId: 'flaky-race', distanceM: 42_195, startsAt: new Date(now - 3600_000) })
    const keys = await registry.registerDevices([{ deviceId: 'flaky-d0', userId: 'flaky-u0', fingerprint: fp(900) }])
    await registry.joinEvents('flaky-race', [{ userId: 'flaky-u0', consentLeaderboard: true }])
    let failNext = true
    const flaky: Db = {
      ...other,
      query<R>(sql: string, params?: unknown[]) {
        if (failNext) {
          failNext = false
          return Promise.reject(new Error('connection terminated unexpectedly'))
        }
        return other.query<R>(sql, params)
      },
    }
    const engine = new OutputEngine(
      flaky,
      new MemoryLeaderboard(),
      testConsent(other).consent,
      { publish: () => {} },
      createMetrics(),
      createLogger('silent'),
    )
    const batch = (t: number) => ({
      deviceId: 'flaky-d0',
      deviceKey: keys.get('flaky-d0') as number,
      userId: 'flaky-u0',
      scalars: [{ metric: DERIVED_METRICS.distance, t, value: 5 }],
      positions: [],
    })
    engine.onCommitted(batch(now - 2000)) // its load fails
    // The failed load has forgotten the blank state (a condition, not a pause): the next batch must load again.
    await waitFor(() => !failNext && engine.distanceOf('flaky-u0') === null)
    engine.onCommitted(batch(now - 1000)) // loads again: the user is in the race
    await engine.stop()
    expect(engine.distanceOf('flaky-u0')).toBe(5)
  })
})

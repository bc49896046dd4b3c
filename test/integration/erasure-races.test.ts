// The races an erasure must win, on a real PostgreSQL: the group-commit writer's barrier holds until rows queued before
// it are committed (here: while a lock keeps their INSERT waiting), a device registered to the person while the
// erasure runs is erased with the rest, and two erasures of one person at once erase once.
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import type { AuditEntry } from '../../src/ops/audit-types.js'
import { eraseUser } from '../../src/ops/erase.js'
import { GroupCommitWriter } from '../../src/pipeline/commit.js'
import type { Db } from '../../src/store/db.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import { createTestDatabase, lockWaits, waitFor } from '../helpers/harness.js'

const log = createLogger('silent')
let database: Awaited<ReturnType<typeof createTestDatabase>>
let db: Db

beforeAll(async () => {
  database = await createTestDatabase()
  db = openPostgres(database.url, 4, log)
  await migrate(db, log)
}, 60_000)
afterAll(async () => {
  await db?.close()
  await database?.drop()
})

describe('GroupCommitWriter.flushBarrier', () => {
  it('resolves at once when nothing is queued, and only after the rows queued before it are committed', async () => {
    const writer = new GroupCommitWriter(
      db,
      { maxBatchRows: 1000, flushIntervalMs: 2, maxQueuedRows: 10_000, writers: 2 },
      createMetrics(),
      log,
    )
    await writer.flushBarrier()
    const locker = new pg.Client({ connectionString: database.url })
    await locker.connect()
    // pg_stat_activity is read through a connection of its own: inside the locker's open transaction PostgreSQL would
    // answer every poll from the snapshot taken at the first one (stats_fetch_consistency), never seeing the INSERT.
    const watcher = new pg.Client({ connectionString: database.url })
    await watcher.connect()
    const waitingInserts = () => lockWaits(watcher, '%INSERT INTO samples%')
    try {
      await locker.query('BEGIN')
      await locker.query('LOCK TABLE samples IN EXCLUSIVE MODE')
      const t = Date.now()
      let committed = false
      const commit = writer.submit(4242, [{ metric: 1, t, value: 70 }], []).then(() => {
        committed = true
      })
      // The flush is out and waiting on the lock: the barrier cannot pass it.
      await waitFor(async () => (await waitingInserts()) > 0)
      let passed = false
      const barrier = writer.flushBarrier().then(() => {
        passed = true
      })
      // Rows queued after the barrier do not hold it up beyond the flush they end up in.
      const later = writer.submit(4242, [{ metric: 1, t: t + 1, value: 71 }], [])
      expect(await waitingInserts()).toBeGreaterThan(0)
      expect(passed).toBe(false)
      expect(committed).toBe(false)
      await locker.query('COMMIT')
      await barrier
      expect(committed).toBe(true)
      const r = await db.query<{ n: number }>(
        'SELECT count(*)::int AS n FROM samples WHERE device_key = 4242 AND value = 70',
      )
      expect(r.rows[0]?.n).toBe(1)
      await commit
      await later
    } finally {
      await watcher.end()
      await locker.end()
      await writer.close(5000)
    }
  })
})

describe('eraseUser against races', () => {
  const audit: AuditEntry[] = []
  const opts = {
    audit: { record: async (e: AuditEntry) => void audit.push(e) },
    actor: { role: 'cli' as const, id: null },
  }

  it('a device registered to the person while the erasure runs is erased too (and its certificate refused)', async () => {
    const registry = new Registry(db)
    await registry.registerDevice({ deviceId: 'race-trk-1', userId: 'race-u1', fingerprint: 'AA:01' })
    let registered = false
    const report = await eraseUser(db, 'race-u1', {
      ...opts,
      onStage: async (stage) => {
        if (stage !== 'deleting' || registered) return
        registered = true
        await registry.registerDevice({ deviceId: 'race-trk-2', userId: 'race-u1', fingerprint: 'AA:02' })
      },
    })
    expect(registered).toBe(true)
    expect(report).toMatchObject({ found: true, certificates: 2, tables: { devices: 2, users: 1 } })
    const left = await db.query('SELECT 1 FROM devices WHERE user_id = $1', ['race-u1'])
    expect(left.rows).toEqual([])
    const refused = await db.query<{ fingerprint: string; device_id: string | null }>(
      `SELECT fingerprint, device_id FROM revoked_certs WHERE fingerprint IN ('AA:01', 'AA:02') ORDER BY 1`,
    )
    expect(refused.rows).toEqual([
      { fingerprint: 'AA:01', device_id: null },
      { fingerprint: 'AA:02', device_id: null },
    ])
  })

  it('two erasures of one person at once: one erases, the other finds nothing; one tombstone', async () => {
    const registry = new Registry(db)
    await registry.registerDevice({ deviceId: 'race-trk-3', userId: 'race-u2', fingerprint: 'AA:03' })
    await registry.createEvent({ eventId: 'race-ev' })
    await registry.joinEvent('race-ev', 'race-u2', { consentLeaderboard: true })
    const before = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM consents WHERE source = 'erasure'`)
    const [one, two] = await Promise.all([eraseUser(db, 'race-u2', opts), eraseUser(db, 'race-u2', opts)])
    expect([one?.found, two?.found].sort()).toEqual([false, true])
    const after = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM consents WHERE source = 'erasure'`)
    expect(Number(after.rows[0]?.n) - Number(before.rows[0]?.n)).toBe(1)
    expect(audit.filter((e) => e.subject === 'race-u2' && e.action === 'erasure')).toHaveLength(2)
  })
})

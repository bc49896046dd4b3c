// The races an erasure must win, on a real PostgreSQL: a device registered to the person while the
// erasure runs is erased with the rest, and two erasures of one person at once erase once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import type { AuditEntry } from '../../src/ops/audit-types.js'
import { eraseUser } from '../../src/ops/erase.js'
import type { Db } from '../../src/store/db.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import { createTestDatabase } from '../helpers/harness.js'

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

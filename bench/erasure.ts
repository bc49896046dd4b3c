// bench/erasure.ts — how long erasing one person takes (src/ops/erase.ts, the database part: the transaction over
// ERASURE_PLAN), for a person with `--rows` samples among `--users` people with as many each (default 10 × 1,000,000:
// one person's million among ten million).
//
// What it does: a fresh store — a new PostgreSQL database (CREATE DATABASE per run, dropped afterwards) or the embedded
// TimescaleDB in a temp dir — migrated; `--users` people with one tracker each, in one event, with a consent row and an
// alert each; each tracker's samples bulk-inserted with generate_series (one per second, metrics hr/spo2/steps/distance
// in turn, ending 9 days ago so every chunk is past the compression window). On TimescaleDB every chunk is then
// compressed (segmented by device, migration 0003: the erasure's no-decompression path) and the rollups are refreshed,
// so the person also has rows in samples_1m and samples_1h. Then one person is erased, offline (no broker: what is
// timed is the database work, which is what grows with the data), and the run is checked: none of their rows left in
// samples or the rollups, everybody else's samples all there, compressed chunks still fully compressed.
// Prints the time in ms, the rows erased per second (all tables), the per-table counts, then one line of JSON.
//
// How to run (from the repository root):
//   npm run build
//   node dist/bench/erasure.js --store postgres                       # 10 × 1,000,000 (plain PostgreSQL here: no compression)
//   node dist/bench/erasure.js --store embedded                       # TimescaleDB in process: compressed chunks, rollups
//   node dist/bench/erasure.js --store embedded --users 10 --rows 20000   # a quick check that it works
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'
import { createLogger } from '../src/log.js'
import type { AuditEntry } from '../src/ops/audit-types.js'
import { eraseUser } from '../src/ops/erase.js'
import type { Db } from '../src/store/db.js'
import { migrate } from '../src/store/migrate.js'
import { Registry } from '../src/store/registry.js'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { openFreshStore } from './lib/fresh-store.js'

const { values: a } = parseArgs({
  options: {
    store: { type: 'string', default: 'postgres' },
    users: { type: 'string', default: '10' },
    rows: { type: 'string', default: '1000000' },
    'insert-batch': { type: 'string', default: '250000' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const store = oneOf('store', a.store, ['postgres', 'embedded'])
const USERS = num('users', a.users, 2)
const ROWS = num('rows', a.rows, 1)
const INSERT_BATCH = num('insert-batch', a['insert-batch'], 1000)

const say = (s: string) => process.stderr.write(`[erasure-bench] ${s}\n`)
const log = createLogger('warn', 'erasure-bench')

const count = async (db: Db, sql: string, params: unknown[] = []) =>
  Number((await db.query<{ n: number }>(sql, params)).rows[0]?.n ?? 0)

const { db, cleanup } = await openFreshStore(store, { connections: 2, tmpPrefix: 'pulsegate-erasure-bench-', log })
try {
  const { timescale } = await migrate(db, log)
  const registry = new Registry(db)
  const users = Array.from({ length: USERS }, (_, i) => `bench-user-${i}`)
  const keys = await registry.registerDevices(
    users.map((u, i) => ({ deviceId: `bench-trk-${i}`, userId: u, fingerprint: `FP:${i}` })),
  )
  await registry.createEvent({ eventId: 'bench-race', distanceM: 42195 })
  await registry.joinEvents(
    'bench-race',
    users.map((userId) => ({ userId, consentLeaderboard: true })),
  )
  for (const [i, u] of users.entries())
    await db.query(
      `INSERT INTO alerts (id, user_id, device_id, kind, severity, opened_at, evidence)
       VALUES ($1, $2, $3, 'hr_high', 'warning', now() - interval '10 days', '{}')`,
      [crypto.randomUUID(), u, `bench-trk-${i}`],
    )

  // One sample per second per tracker, ending 9 days ago (past the 8-day compression window).
  const end = Math.floor(Date.now() / 1000) - 9 * 86400
  const start = end - ROWS
  const t0 = performance.now()
  for (const [i] of users.entries()) {
    const key = keys.get(`bench-trk-${i}`) as number
    for (let from = 0; from < ROWS; from += INSERT_BATCH) {
      const to = Math.min(ROWS, from + INSERT_BATCH) - 1
      await db.query(
        `INSERT INTO samples (time, device_key, metric, value)
         SELECT to_timestamp($1::float8 + g), $2, (ARRAY[1, 2, 3, 7])[1 + g % 4], 60 + (g % 90)
         FROM generate_series($3::int, $4::int) g`,
        [start, key, from, to],
      )
    }
  }
  say(`inserted ${USERS} × ${ROWS} samples in ${Math.round(performance.now() - t0)} ms`)
  let compressed = 0
  if (timescale) {
    const t1 = performance.now()
    compressed = await count(
      db,
      `SELECT count(compress_chunk(c, if_not_compressed => true))::int AS n FROM show_chunks('samples') c`,
    )
    say(`compressed ${compressed} chunks in ${Math.round(performance.now() - t1)} ms`)
    const t2 = performance.now()
    await db.exec(`CALL refresh_continuous_aggregate('samples_1m', NULL, NULL)`)
    await db.exec(`CALL refresh_continuous_aggregate('samples_1h', NULL, NULL)`)
    say(`refreshed the rollups in ${Math.round(performance.now() - t2)} ms`)
  }
  await db.query('ANALYZE')
  const victim = users[0] as string
  const victimKey = keys.get('bench-trk-0') as number
  const totalBefore = await count(db, 'SELECT count(*)::int AS n FROM samples')

  const audit: AuditEntry[] = []
  const started = performance.now()
  const report = await eraseUser(db, victim, {
    audit: { record: async (e) => void audit.push(e) },
    actor: { role: 'cli', id: null },
  })
  const ms = performance.now() - started

  const left = await count(db, 'SELECT count(*)::int AS n FROM samples WHERE device_key = $1', [victimKey])
  const totalAfter = await count(db, 'SELECT count(*)::int AS n FROM samples')
  const rollupsLeft = timescale
    ? (await count(db, 'SELECT count(*)::int AS n FROM samples_1m WHERE device_key = $1', [victimKey])) +
      (await count(db, 'SELECT count(*)::int AS n FROM samples_1h WHERE device_key = $1', [victimKey]))
    : 0
  const partial = timescale
    ? await count(db, `SELECT count(*)::int AS n FROM _timescaledb_catalog.chunk WHERE status & 8 = 8`)
    : 0
  const erasedRows = Object.values(report.tables).reduce((s, n) => s + n, 0)
  const ok =
    left === 0 &&
    rollupsLeft === 0 &&
    totalAfter === totalBefore - ROWS &&
    report.tables.samples === ROWS &&
    partial === 0 &&
    audit.length === 1
  const result = {
    bench: 'erasure',
    store,
    timescale,
    users: USERS,
    rowsPerUser: ROWS,
    compressedChunks: compressed,
    ms: Math.round(ms),
    erasedRows,
    rowsPerSecond: Math.round(erasedRows / (ms / 1000)),
    tables: report.tables,
    verified: ok,
  }
  console.log(
    `${store}${timescale ? ' (TimescaleDB, compressed)' : ''}: erased ${erasedRows} rows of one person among ${USERS} × ${ROWS} samples in ${result.ms} ms (${result.rowsPerSecond} rows/s); ${ok ? 'verified' : 'CHECK FAILED'}`,
  )
  console.log(JSON.stringify(result))
  if (!ok) {
    say(
      `left ${left} samples, ${rollupsLeft} rollup rows; total ${totalBefore} → ${totalAfter}; partial chunks ${partial}`,
    )
    process.exitCode = 1
  }
} finally {
  await cleanup()
}

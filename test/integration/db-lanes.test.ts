// Issue #16 against a real PostgreSQL: a burst of look-ups, commits and sync queries on a pool of 2 that needs far
// longer than pg's 3 s connect timeout to drain. Before the lanes every caller went straight to pg.Pool and the ones
// waiting longest failed with "timeout exceeded when trying to connect"; with the gate they wait in their lane, the
// commits first, and nothing fails.
import pg from 'pg'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import type { Db } from '../../src/store/db.js'
import { DEFAULT_LANE_SETTINGS } from '../../src/store/lanes.js'
import { openPostgres } from '../../src/store/postgres.js'
import { createTestDatabase } from '../helpers/harness.js'

let database: { url: string; drop(): Promise<void> }
let db: Db
const reg = new Registry()
const metrics = {
  depth: new Gauge({ name: 'depth', help: 'd', labelNames: ['lane'], registers: [reg] }),
  wait: new Histogram({ name: 'wait', help: 'w', labelNames: ['lane'], buckets: [1, 3, 60], registers: [reg] }),
  rejected: new Counter({ name: 'rejected', help: 'r', labelNames: ['lane', 'reason'], registers: [reg] }),
}

beforeAll(async () => {
  database = await createTestDatabase()
  // Wait bounds far above the burst: this test is about the pool's time-out, not the lanes' own refusals.
  const roomy = { queue: 10_000, waitMs: 60_000 }
  const settings = { ...DEFAULT_LANE_SETTINGS, identity: roomy, sync: roomy, commit: roomy }
  db = openPostgres(database.url, 2, createLogger('silent'), { settings, metrics })
  await db.query('CREATE TABLE committed (n int PRIMARY KEY)')
})
afterAll(async () => {
  await db?.close()
  await database?.drop()
})

it('a burst longer than the pool connect timeout queues in the lanes: no pool time-out, every commit lands, commits first', async () => {
  const STATEMENT_S = 0.05
  const counts = { sync: 40, identity: 100, commit: 60 }
  const finished: Record<keyof typeof counts, number[]> = { sync: [], identity: [], commit: [] }
  const t0 = Date.now()
  const done = (lane: keyof typeof counts) => () => void finished[lane].push(Date.now() - t0)
  // Enqueued lowest priority first: a plain FIFO would finish the sync work first.
  const work: Promise<unknown>[] = []
  for (let i = 0; i < counts.sync; i++)
    work.push(db.lane('sync').query('SELECT pg_sleep($1)', [STATEMENT_S]).then(done('sync')))
  for (let i = 0; i < counts.identity; i++)
    work.push(db.lane('identity').query('SELECT pg_sleep($1)', [STATEMENT_S]).then(done('identity')))
  for (let i = 0; i < counts.commit; i++)
    work.push(
      db
        .lane('commit')
        .transaction(async (q) => {
          await q.query('INSERT INTO committed (n) VALUES ($1)', [i])
          await q.query('SELECT pg_sleep($1)', [STATEMENT_S])
        })
        .then(done('commit')),
    )
  const outcomes = await Promise.allSettled(work)
  const elapsed = Date.now() - t0
  const failures = outcomes.flatMap((o) => (o.status === 'rejected' ? [String((o.reason as Error).message)] : []))

  // The burst really was longer than pg's connectionTimeoutMillis (3000): the old path times out here.
  expect(elapsed).toBeGreaterThan(3000)
  expect(failures.filter((m) => /timeout exceeded when trying to connect/.test(m))).toEqual([])
  expect(failures).toEqual([])
  const rows = await db.query<{ n: string }>('SELECT count(*) AS n FROM committed')
  expect(Number(rows.rows[0]?.n)).toBe(counts.commit)
  // Priority: commits drain before the look-ups, the look-ups before the sync queries enqueued ahead of both.
  expect(Math.max(...finished.commit)).toBeLessThan(Math.max(...finished.identity))
  expect(Math.max(...finished.identity)).toBeLessThan(Math.max(...finished.sync))
  // Some waited longer than the pool would have let them (the histogram's 3 s bucket is below the count).
  const wait = (await reg.getSingleMetric('wait')?.get())?.values ?? []
  const series = (name: string, lane: string, le?: number) =>
    wait.find(
      (v) =>
        (v as { metricName?: string }).metricName === name &&
        v.labels.lane === lane &&
        (le === undefined || String(v.labels.le) === String(le)),
    )?.value ?? 0
  expect(series('wait_bucket', 'sync', 3)).toBeLessThan(series('wait_count', 'sync'))
  expect(series('wait_count', 'commit')).toBe(counts.commit)
}, 60_000)

it('a pool without the gate, same burst: the pool connect timeout does surface (what the lanes prevent)', async () => {
  // The old path, kept as a control so the first test cannot pass for the wrong reason (a faster server, say).
  const pool = new pg.Pool({ connectionString: database.url, max: 2, connectionTimeoutMillis: 3000 })
  try {
    const outcomes = await Promise.allSettled(
      Array.from({ length: 200 }, () => pool.query('SELECT pg_sleep($1)', [0.05])),
    )
    const timeouts = outcomes.filter(
      (o) => o.status === 'rejected' && /timeout exceeded when trying to connect/.test(String(o.reason)),
    )
    expect(timeouts.length).toBeGreaterThan(0)
  } finally {
    await pool.end()
  }
}, 60_000)

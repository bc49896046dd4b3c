// A flush with GPS fixes is one statement (src/pipeline/commit-rows.ts: lock the tracks, store the fixes, derive
// distance from the new ones, store it with the samples, move the tracks). Through the group-commit writer with three
// writers, on PostgreSQL and on the embedded store: distance equals the path through the stored fixes, a stored fix
// and one older than the track add nothing, concurrent flushes of one device never count a stretch twice.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import { type CommitOutcome, GroupCommitWriter } from '../../src/pipeline/commit.js'
import type { PositionSample } from '../../src/pipeline/types.js'
import { haversineMeters } from '../../src/pipeline/validate.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { createTestDatabase, lockWaits, waitFor } from '../helpers/harness.js'

const log = createLogger('silent')
const T0 = Date.now() - 3_600_000
const fixAt = (device: number, i: number): PositionSample => ({
  t: T0 + i * 1000,
  lat: 52.5 + device * 0.01 + i * 0.00003,
  lon: 13.4 + Math.sin(i / 4) * 0.00002,
  alt: null,
  acc: 5,
})
const pathLength = (fixes: readonly PositionSample[]): number => {
  const s = [...fixes].sort((a, b) => a.t - b.t)
  let m = 0
  for (let i = 1; i < s.length; i++) {
    const a = s[i - 1] as PositionSample
    const b = s[i] as PositionSample
    m += haversineMeters(a.lat, a.lon, b.lat, b.lon)
  }
  return m
}

async function distanceOf(db: Db, device: number): Promise<{ m: number; rows: number; times: number[] }> {
  const r = await db.query<{ t: number; v: number }>(
    `SELECT (extract(epoch FROM time) * 1000)::float8 AS t, value AS v FROM samples
     WHERE device_key = $1 AND metric = 7 ORDER BY time`,
    [device],
  )
  return {
    m: r.rows.reduce((s, x) => s + Number(x.v), 0),
    rows: r.rows.length,
    times: r.rows.map((x) => Number(x.t)),
  }
}

async function trackOf(db: Db, device: number): Promise<number | null> {
  const r = await db.query<{ t: number | null }>('SELECT t FROM device_tracks WHERE device_key = $1', [device])
  return r.rows[0]?.t === undefined || r.rows[0].t === null ? null : Number(r.rows[0].t)
}

type Store = 'postgres' | 'embedded'

describe.each(['postgres', 'embedded'] as Store[])('a flush with fixes as one statement on %s', (store) => {
  let db: Db
  let cleanup: () => Promise<void>
  let dbUrl = ''
  const writer = (flushIntervalMs = 1) =>
    new GroupCommitWriter(
      db,
      { maxBatchRows: 20_000, flushIntervalMs, maxQueuedRows: 100_000, writers: 3 },
      createMetrics(),
      log,
    )

  beforeAll(async () => {
    if (store === 'postgres') {
      const database = await createTestDatabase()
      dbUrl = database.url
      db = openPostgres(database.url, 4, log)
      await migrate(db, log)
      cleanup = async () => {
        await db.close()
        await database.drop()
      }
    } else {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-tracked-'))
      db = await openEmbedded(dir, log, 'worker')
      await migrate(db, log)
      cleanup = async () => {
        await db.close()
        fs.rmSync(dir, { recursive: true, force: true })
      }
    }
  }, 120_000)
  afterAll(async () => {
    await cleanup?.()
  })

  it('many new devices at once, three writers: each one’s distance is the length of its path', async () => {
    const w = writer()
    const devices = Array.from({ length: 30 }, (_, k) => 1000 + k)
    const sent = new Map<number, PositionSample[]>(devices.map((d) => [d, []]))
    for (let round = 0; round < 8; round++) {
      // one batch per device per round, all devices at once: their flushes run side by side
      await Promise.all(
        devices.map((d) => {
          const fixes = [0, 1, 2].map((k) => fixAt(d, round * 3 + k))
          sent.get(d)?.push(...fixes)
          return w.submit(d, [{ metric: 1, t: fixes[0]!.t, value: 120 }], fixes)
        }),
      )
    }
    for (const d of devices) {
      const got = await distanceOf(db, d)
      expect(got.rows).toBe(23)
      expect(got.m).toBeCloseTo(pathLength(sent.get(d) ?? []), 6)
      expect(await trackOf(db, d)).toBe(fixAt(d, 23).t)
    }
    await w.close(5000)
  })

  it('in one flush: fixes out of order, a stored one and one older than the track add no distance', async () => {
    const d = 2000
    const w = writer(50)
    const a = [10, 20, 30].map((i) => fixAt(d, i))
    await w.submit(d, [], a)
    // one flush (the 50 ms timer): B's fixes out of order; C repeats a stored fix, has one older than the track
    const b = [50, 40].map((i) => fixAt(d, i))
    const c = [30, 25, 60].map((i) => fixAt(d, i))
    const [ob, oc]: CommitOutcome[] = await Promise.all([
      w.submit(d, [{ metric: 1, t: b[0]!.t, value: 130 }], b),
      w.submit(d, [], c),
    ])
    expect(ob?.derived.map((s) => s.t)).toEqual([fixAt(d, 40).t, fixAt(d, 50).t])
    expect(oc?.derived.map((s) => s.t)).toEqual([fixAt(d, 60).t])
    expect(ob?.derived[0]?.value).toBeCloseTo(haversineMeters(a[2]!.lat, a[2]!.lon, b[1]!.lat, b[1]!.lon), 9)
    // 1 sample + 4 new fixes of the flush; the repeated fix is not counted, the derived rows are not either
    expect(ob?.inserted).toBe(5)
    const got = await distanceOf(db, d)
    expect(got.times).toEqual([20, 30, 40, 50, 60].map((i) => fixAt(d, i).t))
    expect(got.m).toBeCloseTo(pathLength([10, 20, 30, 40, 50, 60].map((i) => fixAt(d, i))), 6)
    const stored = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM positions WHERE device_key = $1', [d])
    expect(stored.rows[0]?.n).toBe(7)
    expect(await trackOf(db, d)).toBe(fixAt(d, 60).t)
    // fixes that are all older than the track: stored, no distance, the track stays
    const late = await w.submit(
      d,
      [],
      [15, 17].map((i) => fixAt(d, i)),
    )
    expect(late.derived).toEqual([])
    expect((await distanceOf(db, d)).rows).toBe(5)
    expect(await trackOf(db, d)).toBe(fixAt(d, 60).t)
    await w.close(5000)
  })

  it('one device’s batches in concurrent flushes (and each sent twice): no stretch counted twice', async () => {
    const d = 3000
    const w = writer(0)
    const batches = Array.from({ length: 12 }, (_, k) => [0, 1, 2].map((i) => fixAt(d, k * 3 + i)))
    const commits: Promise<CommitOutcome>[] = []
    for (const fixes of [...batches, ...batches]) {
      commits.push(w.submit(d, [], fixes))
      // a flush per batch or two, up to three of them in flight
      await new Promise((r) => setTimeout(r, 1))
    }
    await Promise.all(commits)
    const all = batches.flat()
    const got = await distanceOf(db, d)
    // a flush that locked the track after a later one skips its older fixes (never derives them twice)
    expect(new Set(got.times).size).toBe(got.rows)
    expect(got.rows).toBeLessThanOrEqual(all.length - 1)
    expect(got.m).toBeLessThanOrEqual(pathLength(all) + 1e-6)
    expect(got.times.every((t) => all.some((f) => f.t === t))).toBe(true)
    const stored = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM positions WHERE device_key = $1', [d])
    expect(stored.rows[0]?.n).toBe(all.length)
    expect(await trackOf(db, d)).toBe(fixAt(d, 35).t)
    await w.close(5000)
  })

  it.runIf(store === 'postgres')(
    'two flushes of one device wait for its track in turn: the second derives from the first',
    async () => {
      const d = 4000
      const w = writer(0)
      await w.submit(d, [], [fixAt(d, 0)])
      const locker = new pg.Client({ connectionString: dbUrl })
      const watcher = new pg.Client({ connectionString: dbUrl })
      await locker.connect()
      await watcher.connect()
      const waiting = () => lockWaits(watcher, 'WITH fix%')
      try {
        await locker.query('BEGIN')
        await locker.query('SELECT * FROM device_tracks WHERE device_key = $1 FOR UPDATE', [d])
        const first = w.submit(
          d,
          [],
          [1, 2].map((i) => fixAt(d, i)),
        )
        await waitFor(async () => (await waiting()) === 1, 10_000)
        const second = w.submit(
          d,
          [],
          [3, 4].map((i) => fixAt(d, i)),
        )
        await waitFor(async () => (await waiting()) === 2, 10_000)
        await locker.query('COMMIT')
        await Promise.all([first, second])
      } finally {
        await locker.end()
        await watcher.end()
      }
      const got = await distanceOf(db, d)
      expect(got.rows).toBe(4)
      expect(got.m).toBeCloseTo(pathLength([0, 1, 2, 3, 4].map((i) => fixAt(d, i))), 6)
      await w.close(5000)
    },
  )

  it.runIf(store === 'postgres')(
    'a flush cancelled as a deadlock victim runs again: stored once, not refused',
    async () => {
      const d = 5000
      const metrics = createMetrics()
      const w = new GroupCommitWriter(
        db,
        { maxBatchRows: 20_000, flushIntervalMs: 1, maxQueuedRows: 100_000, writers: 1 },
        metrics,
        log,
      )
      // PostgreSQL's own error for a deadlock victim, once (a sequence is not rolled back with the statement)
      await db.exec(`CREATE SEQUENCE victim_once;
      CREATE FUNCTION victim_once() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN
        IF nextval('victim_once') = 1 THEN RAISE EXCEPTION 'deadlock detected (test)' USING ERRCODE = '40P01'; END IF;
        RETURN NULL; END $f$;
      CREATE TRIGGER victim_once BEFORE INSERT ON positions FOR EACH STATEMENT EXECUTE FUNCTION victim_once();`)
      try {
        const fixes = [0, 1, 2].map((i) => fixAt(d, i))
        const out = await w.submit(d, [{ metric: 1, t: fixes[0]!.t, value: 120 }], fixes)
        expect(out.inserted).toBe(4)
        expect((await metrics.writeErrors.get()).values[0]?.value).toBe(1)
        expect((await distanceOf(db, d)).rows).toBe(2)
      } finally {
        await db.exec('DROP TRIGGER victim_once ON positions; DROP FUNCTION victim_once(); DROP SEQUENCE victim_once;')
        await w.close(5000)
      }
    },
  )
})

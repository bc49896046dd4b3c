// Differentially private event statistics on both stores (a fresh PostgreSQL database, the embedded TimescaleDB):
// only research-consenting participants are counted (the latest consent row decides), each in one cell per
// histogram; distances summed incrementally equal a sum from scratch; the ε ledger refuses past the budget, also
// after the store is closed and reopened and with two processes spending at once; an app receives the retained
// events/{eid}/stats message with ε spent and remaining, and a restarted broker restores it and stays refused;
// `pulsegate stats` works offline and through a running broker.
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { main } from '../../src/cli/main.js'
import { type CellLayout, countsOf, layoutFor } from '../../src/insights/dp/cells.js'
import { parseEpsilon, share } from '../../src/insights/dp/epsilon.js'
import { ledgerReport, spend } from '../../src/insights/dp/ledger.js'
import { CryptoRandom, discreteLaplaceMath } from '../../src/insights/dp/noise.js'
import { buildRelease, noisyCounts, type StatsMessage } from '../../src/insights/dp/release.js'
import { type EventInfo, ProgressSource } from '../../src/insights/dp/source.js'
import { createLogger } from '../../src/log.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import {
  connectWithToken,
  createTestDatabase,
  nextMessage,
  type StoreKind,
  startTestBroker,
  type TestBroker,
  tempDir,
  token,
  waitFor,
} from '../helpers/harness.js'

const log = createLogger('silent')
const SECRET = 'test-secret-0123456789abcdef'
const NOW = Math.floor(Date.now() / 1000) * 1000
const YEAR = new Date(NOW).getUTCFullYear()
const STARTS = NOW - 30 * 60_000
const COURSE = 10_000
/** the longest timeout of a test below (the broker test's, written out there) */
const LONGEST_TEST_MS = 90_000

interface Runner {
  id: string
  birthYear: number
  distanceM: number
  hr: number
  /** consent rows in order: [granted, at offset ms, purpose?] */
  consents: { granted: boolean; at: number; purpose?: string }[]
  participant: boolean
  device: boolean
}

/** Consenting runners sit in segments 0–10 km, zones z2/z3, age 30–39; everyone excluded is a finisher in z5, 70+. */
function runners(): Runner[] {
  const rs: Runner[] = []
  const yes = [{ granted: true, at: -3600_000 }]
  for (let i = 0; i < 40; i++)
    rs.push({
      id: `c${i}`,
      birthYear: YEAR - 35,
      distanceM: 2000 + 150 * i,
      hr: 120 + (i % 20),
      consents: yes,
      participant: true,
      device: true,
    })
  const excluded = (id: string, consents: Runner['consents'], participant = true): Runner => ({
    id,
    birthYear: YEAR - 75,
    distanceM: 10_500,
    hr: 190,
    consents,
    participant,
    device: true,
  })
  for (let i = 0; i < 10; i++) rs.push(excluded(`never${i}`, []))
  for (let i = 0; i < 10; i++)
    rs.push(
      excluded(`withdrew${i}`, [
        { granted: true, at: -7200_000 },
        { granted: false, at: -3600_000 },
      ]),
    )
  for (let i = 0; i < 10; i++)
    rs.push(excluded(`other${i}`, [{ granted: true, at: -3600_000, purpose: 'recommendations' }]))
  // Same `at`: the later row (higher id) decides.
  rs.push(
    excluded('tie', [
      { granted: true, at: -3600_000 },
      { granted: false, at: -3600_000 },
    ]),
  )
  rs.push(excluded('outsider', yes, false))
  // Withdrew, then granted again: counted.
  rs.push({
    ...rs[0],
    id: 'regranted',
    consents: [
      { granted: false, at: -7200_000 },
      { granted: true, at: -3600_000 },
    ],
  } as Runner)
  rs.push({ ...(rs[0] as Runner), id: 'nodevice', device: false })
  return rs
}

/** participants whose last research row is a grant */
const CONSENTING = new Set(
  runners()
    .filter((r) => r.participant && r.consents.filter((c) => !c.purpose).at(-1)?.granted)
    .map((r) => r.id),
)

/** The consents table gains a version column on another branch (migration 0007): fill it when it is there. */
async function insertConsent(db: Db, userId: string, purpose: string, granted: boolean, at: number): Promise<void> {
  const hasVersion =
    (
      await db.query(
        `SELECT 1 FROM information_schema.columns WHERE table_name = 'consents' AND column_name = 'version'`,
      )
    ).rows.length > 0
  if (hasVersion)
    await db.query(
      `INSERT INTO consents (user_id, purpose, granted, source, at, version)
       SELECT $1, $2, $3, 'cli', to_timestamp($4 / 1000.0),
              coalesce((SELECT max(version) FROM consents WHERE user_id = $1 AND purpose = $2), 0) + 1`,
      [userId, purpose, granted, at],
    )
  else
    await db.query(
      `INSERT INTO consents (user_id, purpose, granted, source, at) VALUES ($1, $2, $3, 'cli', to_timestamp($4 / 1000.0))`,
      [userId, purpose, granted, at],
    )
}

interface Expected {
  distance: Map<string, number>
  hr: Map<string, number>
  pace: Map<string, number>
}

/** Registers the runners, the race and their samples: distance every 10 s since the start, HR every 5 s lately. */
async function seed(db: Db, eventId: string): Promise<Expected> {
  const reg = new Registry(db)
  const rs = runners()
  await reg.registerDevices(
    rs.filter((r) => r.device).map((r) => ({ deviceId: `trk-${r.id}`, userId: r.id, fingerprint: `fp-${r.id}` })),
    rs.map((r) => ({ userId: r.id, birthYear: r.birthYear })),
  )
  await reg.createEvent({ eventId, distanceM: COURSE, startsAt: new Date(STARTS) })
  await reg.joinEvents(
    eventId,
    rs.filter((r) => r.participant).map((r) => ({ userId: r.id })),
  )
  for (const r of rs)
    for (const c of r.consents) await insertConsent(db, r.id, c.purpose ?? 'research', c.granted, NOW + c.at)
  const keys = new Map(
    (await db.query<{ device_id: string; device_key: number }>('SELECT device_id, device_key FROM devices')).rows.map(
      (d) => [d.device_id, Number(d.device_key)],
    ),
  )
  const t: number[] = []
  const k: number[] = []
  const m: number[] = []
  const v: number[] = []
  const exp: Expected = { distance: new Map(), hr: new Map(), pace: new Map() }
  for (const r of rs) {
    const key = keys.get(`trk-${r.id}`)
    if (key === undefined) continue
    const times: number[] = []
    for (let x = STARTS + 10_000; x <= NOW; x += 10_000) times.push(x)
    const step = r.distanceM / times.length
    for (const x of times) {
      t.push(x)
      k.push(key)
      m.push(7)
      v.push(step)
    }
    for (let x = NOW - 120_000 + 5000; x <= NOW; x += 5000) {
      t.push(x)
      k.push(key)
      m.push(1)
      v.push(r.hr)
    }
    exp.distance.set(r.id, step * times.length)
    exp.hr.set(r.id, r.hr)
    exp.pace.set(r.id, Math.round(1000 / (step / 10)))
  }
  await db.query(
    `INSERT INTO samples (time, device_key, metric, value)
     SELECT to_timestamp(t / 1000.0), k, m, v FROM unnest($1::float8[], $2::int[], $3::int[], $4::float8[]) AS x(t, k, m, v)`,
    [t, k, m, v],
  )
  return exp
}

async function open(store: StoreKind, where: { url?: string; dir?: string }): Promise<Db> {
  const db =
    store === 'postgres' ? openPostgres(where.url as string, 4, log) : await openEmbedded(where.dir as string, log)
  await migrate(db, log)
  return db
}

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = []
  const err: string[] = []
  const l = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')))
  const e = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')))
  // commander writes its usage errors to stderr itself
  const w = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => {
    err.push(String(s))
    return true
  })
  try {
    const code = await main(['node', 'pulsegate', ...args])
    return { code, out: out.join('\n'), err: err.join('\n') }
  } finally {
    l.mockRestore()
    e.mockRestore()
    w.mockRestore()
  }
}

/**
 * The ledger's budget is per UTC day: a test that ran across midnight would see it renewed half-way. Started within
 * `marginMs` of midnight, it waits for the new day instead (the condition itself, not a guess of how long it takes).
 */
async function clearOfUtcMidnight(marginMs: number): Promise<void> {
  const now = Date.now()
  const toMidnight = 86_400_000 - (now % 86_400_000)
  if (toMidnight < marginMs) await new Promise((r) => setTimeout(r, toMidnight + 1000))
}

/** Sets (or, for undefined, unsets) variables; returns the function that puts the old values back. */
function setEnv(vars: Record<string, string | undefined>): () => void {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  const apply = (vs: Record<string, string | undefined>) => {
    for (const [k, v] of Object.entries(vs)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
  apply(vars)
  return () => apply(old)
}

async function counterValue(tb: TestBroker, name: string): Promise<number> {
  const metric = tb.pg.metrics.registry.getSingleMetric(name)
  const values = (await metric?.get())?.values ?? []
  return values.reduce((a, x) => a + x.value, 0)
}

describe.each<StoreKind>(['postgres', 'embedded'])('dp statistics on %s', (store) => {
  const dir = tempDir('pulsegate-dp-')
  let url: string | undefined
  let drop: (() => Promise<void>) | undefined
  let db: Db
  let expected: Expected
  const ev: EventInfo = { eventId: 'race', startsAt: STARTS, courseM: COURSE }

  // Per test, with the longest test's timeout as the margin: a test that starts clear of midnight either ends before
  // it or fails on its timeout, however slow the machine. (One margin for the whole suite, taken in beforeAll, was a
  // guess at how long the suite takes, and a loaded machine can take longer; the tests share no ledger state.)
  beforeEach(() => clearOfUtcMidnight(LONGEST_TEST_MS + 5000), LONGEST_TEST_MS + 30_000)
  beforeAll(async () => {
    if (store === 'postgres') {
      const t = await createTestDatabase()
      url = t.url
      drop = t.drop
    }
    db = await open(store, { url, dir })
    expected = await seed(db, 'race')
  }, 6 * 60_000)
  afterAll(async () => {
    await db?.close().catch(() => {})
    await drop?.()
  })

  it('counts exactly the participants whose latest research consent is granted', async () => {
    const users = await new ProgressSource(db).progress(ev, NOW)
    expect(new Set(users.map((u) => u.userId))).toEqual(CONSENTING)
    expect(CONSENTING.size).toBe(42) // c0…c39, regranted, nodevice
    expect(['tie', 'outsider', 'never0', 'withdrew0', 'other0'].filter((id) => CONSENTING.has(id))).toEqual([])
    // the cells' contributors are the consenting runners with data, once per histogram
    const layout = layoutFor(COURSE)
    const { assignment } = buildRelease('race', COURSE, users, {
      epsilon: 500_000,
      suppressBelow: 10,
      year: YEAR,
      t: NOW,
    })
    const withData = new Set([...CONSENTING].filter((id) => id !== 'nodevice'))
    for (const h of ['distance', 'hrZones', 'paceByAge'] as const) {
      const ids = [...assignment[h].values()].flat()
      expect(ids.length, h).toBe(withData.size)
      expect(new Set(ids), h).toEqual(withData)
    }
    // everyone excluded would be a finisher in z5 aged 70+: those cells are empty
    expect(assignment.distance.get('finished')).toEqual([])
    expect(assignment.hrZones.get('z5')).toEqual([])
    expect(layout.paceByAge.filter((c) => c.startsWith('70+|')).flatMap((c) => assignment.paceByAge.get(c))).toEqual([])
  })

  it("the non-consenting runners' cell is pure noise around 0 over 500 releases", async () => {
    const users = await new ProgressSource(db).progress(ev, NOW)
    const layout: CellLayout = layoutFor(COURSE)
    const { assignment } = buildRelease('race', COURSE, users, {
      epsilon: 500_000,
      suppressBelow: 10,
      year: YEAR,
      t: 1,
    })
    const exact = countsOf(assignment, layout)
    const epsH = share(500_000, 3)
    const finished = layout.distance.indexOf('finished')
    const rng = new CryptoRandom()
    const n = 500
    let sum = 0
    for (let i = 0; i < n; i++) sum += noisyCounts(exact, epsH, rng).distance[finished] as number
    // 32 excluded finishers would put the mean at 32; pure noise has mean 0 and sd 8.5/√500 ≈ 0.38
    expect(Math.abs(sum / n)).toBeLessThan(5 * Math.sqrt(discreteLaplaceMath.variance(1 / 6) / n))
  })

  it('distance, last-minute HR and pace come out of the samples; incremental sums equal a sum from scratch', async () => {
    const kept = new ProgressSource(db)
    const earlier = await kept.progress(ev, NOW - 5 * 60_000)
    const c7 = earlier.find((u) => u.userId === 'c7')
    // samples up to NOW − 5 min only: 150 of the 180 steps
    expect(c7?.distanceM).toBeCloseTo(((expected.distance.get('c7') as number) * 150) / 180, 6)
    const later = await kept.progress(ev, NOW)
    const fresh = await new ProgressSource(db).progress(ev, NOW)
    for (const u of fresh) {
      const inc = later.find((x) => x.userId === u.userId)
      expect(inc?.distanceM, u.userId).toBeCloseTo(u.distanceM, 6)
      if (u.userId === 'nodevice') {
        expect([u.distanceM, u.hrBpm, u.paceSPerKm]).toEqual([0, null, null])
        continue
      }
      expect(u.distanceM).toBeCloseTo(expected.distance.get(u.userId) as number, 6)
      expect(u.hrBpm).toBe(expected.hr.get(u.userId))
      expect(u.paceSPerKm).toBe(expected.pace.get(u.userId))
    }
  })

  it('the ledger refuses past the budget, and still does after the store is closed and reopened', async () => {
    await new Registry(db).createEvent({ eventId: 'ledger-ev' })
    const req = {
      eventId: 'ledger-ev',
      epsilon: parseEpsilon('0.3'),
      budget: parseEpsilon('1'),
      series: 'operator' as const,
      build: (after: { spent: number }) => ({ spent: after.spent }),
    }
    const outcomes = []
    for (let i = 0; i < 4; i++) outcomes.push(await spend(db, req))
    expect(outcomes.map((o) => o.ok)).toEqual([true, true, true, false])
    expect(outcomes.map((o) => o.spent)).toEqual([300_000, 600_000, 900_000, 900_000])
    expect(outcomes[3]).toMatchObject({ ok: false, reason: 'budget' })
    // 0.1 still fits exactly (0.9 + 0.1 = 1 in numeric, where floats would say 0.9999999999999999 or 1.0000000000000002)
    expect((await spend(db, { ...req, epsilon: parseEpsilon('0.1') })).ok).toBe(true)

    await db.close()
    db = await open(store, { url, dir })
    const after = await spend(db, { ...req, epsilon: parseEpsilon('0.000001') })
    expect(after).toMatchObject({ ok: false, reason: 'budget', spent: 1_000_000 })
    const report = await ledgerReport(db, 'ledger-ev', parseEpsilon('1'))
    expect(report.days).toHaveLength(1)
    expect(report.days[0]).toMatchObject({ spent: '1', remaining: '0', releases: 4 })
    expect(report.recent.map((r) => r.epsilon)).toEqual(['0.1', '0.3', '0.3', '0.3'])
  }, 60_000)

  it('brokers sharing the database release once per interval between them', async () => {
    await new Registry(db).createEvent({ eventId: 'interval-ev' })
    const req = {
      eventId: 'interval-ev',
      epsilon: parseEpsilon('0.5'),
      budget: parseEpsilon('10'),
      series: 'broker' as const,
      minIntervalMs: 60_000,
      build: () => ({}),
    }
    expect((await spend(db, req)).ok).toBe(true)
    expect(await spend(db, req)).toMatchObject({ ok: false, reason: 'interval', spent: 500_000 })
    // an operator release is not held back by the interval
    expect((await spend(db, { ...req, series: 'operator' })).ok).toBe(true)
  })

  it.runIf(store === 'postgres')('two processes spending at once never pass the budget', async () => {
    await new Registry(db).createEvent({ eventId: 'race-ev' })
    const a = openPostgres(url as string, 8, log)
    const b = openPostgres(url as string, 8, log)
    try {
      const req = {
        eventId: 'race-ev',
        epsilon: parseEpsilon('0.25'),
        budget: parseEpsilon('3'),
        series: 'operator' as const,
        build: () => ({}),
      }
      const all = await Promise.all(Array.from({ length: 40 }, (_, i) => spend(i % 2 ? a : b, req)))
      expect(all.filter((o) => o.ok)).toHaveLength(12)
      const report = await ledgerReport(db, 'race-ev', parseEpsilon('3'))
      expect(report.days[0]).toMatchObject({ spent: '3', releases: 12 })
    } finally {
      await a.close()
      await b.close()
    }
  })

  it('publishes retained events/{eid}/stats with ε spent and remaining; stops at the budget, also after a restart; pulsegate stats works', async () => {
    await db.close()
    const reuse = store === 'postgres' ? { dbUrl: url as string } : { dataDir: dir }
    const dp = { intervalMs: 200, epsilonPerRelease: 0.5, budgetPerDay: 1.5 }
    let tb = await startTestBroker(store, { dp }, reuse)
    try {
      const refusals = () => counterValue(tb, 'pulsegate_dp_budget_refusals_total')
      await waitFor(async () => (await refusals()) >= 1, 20_000)
      expect(await counterValue(tb, 'pulsegate_dp_releases_total')).toBe(3)
      const app = await connectWithToken(tb, await token(tb, 'c3', 'app'), 'app:c3:phone')
      const retained = nextMessage(app, 'events/race/stats')
      await app.subscribeAsync('events/race/stats', { qos: 0 })
      const msg = JSON.parse((await retained).payload.toString()) as StatsMessage
      expect(msg.eventId).toBe('race')
      expect(msg.epsilon).toMatchObject({ release: 0.5, spentToday: 1.5, remainingToday: 0, budgetPerDay: 1.5 })
      expect(msg.method).toBe('discrete-laplace')
      expect(Object.keys(msg.cells.segments)).toEqual(['0-5km', '5-10km'])
      expect(Object.keys(msg.cells.hrZones)).toHaveLength(6)
      await app.endAsync()

      // pulsegate stats: offline against PostgreSQL, through the broker's admin RPC on the embedded store
      const restoreEnv = setEnv({
        PULSEGATE_DATA_DIR: tb.dataDir,
        PULSEGATE_JWT_SECRET: SECRET,
        PULSEGATE_LOG_LEVEL: 'silent',
        PULSEGATE_DP_BUDGET_PER_DAY: '1.5',
        PULSEGATE_DATABASE_URL: url,
      })
      try {
        await tb.pg.registry.createEvent({ eventId: 'cli-ev', distanceM: COURSE })
        const first = await run('stats', 'event', 'cli-ev')
        expect(first.code, first.err).toBe(0)
        expect((JSON.parse(first.out) as StatsMessage).epsilon).toMatchObject({ spentToday: 0.5, remainingToday: 1 })
        const dry = await run('stats', 'event', 'cli-ev', '--dry-run', '--epsilon', '1.5')
        expect(JSON.parse(dry.out)).toMatchObject({ dryRun: true, allowed: false, wouldSpend: '1.5' })
        expect(JSON.parse(dry.out)).not.toHaveProperty('cells')
        expect((await run('stats', 'event', 'cli-ev', '--epsilon', '1')).code).toBe(0)
        const refused = await run('stats', 'event', 'cli-ev')
        expect(refused.code).toBe(1)
        expect(refused.err).toMatch(/privacy budget .* would be exceeded/)
        const zero = await run('stats', 'event', 'cli-ev', '--epsilon', '0')
        expect(zero.code).toBe(2)
        expect(zero.err).toMatch(/--epsilon must be > 0/)
        expect((await run('stats', 'event', 'nope')).err).toMatch(/unknown event/)
        const ledger = JSON.parse((await run('stats', 'ledger', 'cli-ev')).out)
        expect(ledger.days[0]).toMatchObject({ spent: '1.5', remaining: '0', releases: 2 })
        expect(ledger.recent.map((r: { series: string }) => r.series)).toEqual(['operator', 'operator'])
      } finally {
        restoreEnv()
      }

      await tb.stop()
      // The same data dir: its key files are the ones this database was set up with (a fresh one would be refused).
      tb = await startTestBroker(store, { dp }, { ...reuse, dataDir: tb.dataDir })
      const app2 = await connectWithToken(tb, await token(tb, 'c3', 'app'), 'app:c3:phone')
      const restored = nextMessage(app2, 'events/race/stats')
      await app2.subscribeAsync('events/race/stats', { qos: 0 })
      expect(JSON.parse((await restored).payload.toString())).toEqual(msg)
      await app2.endAsync()
      await waitFor(async () => (await refusals()) >= 1, 20_000)
      expect(await counterValue(tb, 'pulsegate_dp_releases_total')).toBe(0)
      const n = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM dp_releases WHERE event_id = 'race'`,
      )
      expect(n.rows[0]?.n).toBe(3)
    } finally {
      await tb.stop()
    }
  }, 90_000)
})

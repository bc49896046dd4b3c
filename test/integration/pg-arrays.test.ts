// The commit's binary array parameters (src/pipeline/pg-arrays.ts) against a real PostgreSQL: every column type the
// commit sends reaches the server as the same values as through the text literals (the reference), edge
// values included, and through the commit statements themselves the two encodings store identical rows. The embedded
// store (PGlite, on its worker thread and on the caller's) binds the same bytes to the same values, as the commit sends them.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import {
  Columns,
  INSERT_SIGNED_BATCHES,
  markParams,
  PLAIN_SAMPLES,
  sampleParams,
  writeTracked,
} from '../../src/pipeline/commit-rows.js'
import { type ArrayParams, binaryArrays, textArrays } from '../../src/pipeline/pg-arrays.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { createTestDatabase } from '../helpers/harness.js'

const log = createLogger('silent')
let database: Awaited<ReturnType<typeof createTestDatabase>>
let db: Db

beforeAll(async () => {
  database = await createTestDatabase()
  db = openPostgres(database.url, 2, log)
  await migrate(db, log)
}, 60_000)
afterAll(async () => {
  await db?.close()
  await database?.drop()
})

const encodings: [string, ArrayParams][] = [
  ['text', textArrays],
  ['binary', binaryArrays],
]

/** the elements as the server sees them, printed by the server (text output is exact for every type here) */
async function serverSees(sqlType: string, param: unknown, on: Db = db): Promise<(string | null)[]> {
  const r = await on.query<{ x: string | null }>(
    `SELECT x::text AS x FROM unnest($1::${sqlType}[]) WITH ORDINALITY AS u(x, i) ORDER BY i`,
    [param],
  )
  return r.rows.map((row) => row.x)
}

const FLOAT8 = [
  0,
  -0,
  -1.5,
  0.1,
  1 / 3,
  5e-324,
  -2.2250738585072014e-308,
  1.7976931348623157e308,
  1_700_000_000_123.456,
  -62_135_596_800_000,
  Number.MAX_SAFE_INTEGER,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
]
const FLOAT4 = [null, 0, -0, 1.5, 0.1, -123.456, 3.4028234663852886e38, 1.401298464324817e-45, null, 8848.86, null]
const INT2 = [0, 1, -1, 32767, -32768, 300]
const INT4 = [0, 1, -1, 2147483647, -2147483648, 65536, 123456789]
const INT8 = [
  0,
  1,
  -1,
  4294967295,
  4294967296,
  -4294967296,
  -4294967297,
  Number.MAX_SAFE_INTEGER,
  Number.MIN_SAFE_INTEGER,
]
const BOOL = [true, false, false, true]

const CASES = [
  ['float8', (e: ArrayParams) => e.float8(FLOAT8)],
  ['float4', (e: ArrayParams) => e.float4(FLOAT4)],
  ['int2', (e: ArrayParams) => e.int2(INT2)],
  ['int4', (e: ArrayParams) => e.int4(INT4)],
  ['int8', (e: ArrayParams) => e.int8(INT8)],
  ['bool', (e: ArrayParams) => e.bool(BOOL)],
  ['float8', (e: ArrayParams) => e.float8([])],
  ['float4', (e: ArrayParams) => e.float4([])],
  ['float4', (e: ArrayParams) => e.float4([null, null])],
  ['int8', (e: ArrayParams) => e.int8([])],
] as const

describe('array parameters: binary and text reach the server as the same values', () => {
  it.each(CASES)('%s', async (sqlType, encode) => {
    const viaText = await serverSees(sqlType, encode(textArrays))
    const viaBinary = await serverSees(sqlType, encode(binaryArrays))
    expect(Buffer.isBuffer(encode(binaryArrays))).toBe(true)
    expect(viaBinary).toEqual(viaText)
  })

  it('the values themselves: exact float8 and int8, NULLs where they were', async () => {
    const f8 = await db.query<{ x: number }>(
      'SELECT x FROM unnest($1::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i',
      [binaryArrays.float8(FLOAT8)],
    )
    // -0 arrives as 0, as it does through the text literal (JS prints it "0")
    expect(f8.rows.map((r) => r.x)).toEqual(FLOAT8.map((x) => x + 0))
    expect(Object.is(f8.rows[1]?.x, 0)).toBe(true)
    expect(await serverSees('int8', binaryArrays.int8(INT8))).toEqual(INT8.map(String))
    expect(await serverSees('float4', binaryArrays.float4(FLOAT4))).toEqual(
      FLOAT4.map((x) => (x === null ? null : expect.any(String))),
    )
  })

  it('refuses what the server would refuse as text: fractions and out-of-range integers', async () => {
    for (const [sqlType, bad] of [
      ['int2', [32768]],
      ['int2', [1.5]],
      ['int4', [2147483648]],
      ['int4', [-2147483649]],
      ['int4', [Number.NaN]],
      ['int8', [2 ** 53]],
      ['int8', [0.5]],
    ] as const) {
      const e = (a: ArrayParams) => (a[sqlType] as (xs: readonly number[]) => unknown)(bad)
      expect(() => e(binaryArrays), `${sqlType} ${bad[0]}`).toThrow(RangeError)
      if (sqlType !== 'int8' || bad[0] !== 2 ** 53) {
        await expect(serverSees(sqlType, e(textArrays)), `${sqlType} ${bad[0]} as text`).rejects.toThrow()
      }
    }
  })
})

describe.each(['worker', 'main'] as const)('the embedded store on the %s thread binds them in binary', (thread) => {
  let emb: Db
  let dir: string
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-arrays-'))
    emb = await openEmbedded(dir, log, thread)
  }, 120_000)
  afterAll(async () => {
    await emb?.close()
    if (dir) fs.rmSync(dir, { recursive: true, force: true })
  })
  it('every case: the bytes and the text literal give the same elements', async () => {
    for (const [sqlType, encode] of CASES) {
      const viaText = await serverSees(sqlType, encode(textArrays), emb)
      expect(await serverSees(sqlType, encode(binaryArrays), emb), sqlType).toEqual(viaText)
    }
    // and the values as numbers, exact
    const f8 = await emb.query<{ x: number }>(
      'SELECT x FROM unnest($1::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i',
      [binaryArrays.float8(FLOAT8)],
    )
    expect(f8.rows.map((r) => r.x)).toEqual(FLOAT8.map((x) => x + 0))
  })
  it('other parameters are bound as before (text arrays, JS arrays, bytea)', async () => {
    expect(await serverSees('int4', '{1,2,3}', emb)).toEqual(['1', '2', '3'])
    const r = await emb.query<{ n: number; b: string }>(
      'SELECT cardinality($1::int4[]) AS n, encode($2::bytea, $3) AS b',
      [[4, 5], new Uint8Array([1, 2]), 'hex'],
    )
    expect(r.rows[0]).toEqual({ n: 2, b: '0102' })
  })
})

describe('the commit statements store identical rows through either encoding', () => {
  // Same readings, fixes and marks for two devices: one written with each encoding.
  const t0 = 1_700_000_000_000.001
  const waiter = { resolve: () => {}, reject: () => {}, enqueuedAt: 0 }
  const fill = (cols: Columns, deviceKey: number) => {
    const scalars = [
      { t: t0, metric: 1, value: 142 },
      { t: t0 + 0.5, metric: 2, value: -0.25 },
      { t: t0 + 1000.999, metric: 3, value: 1e-9 },
      { t: t0 - 86_400_000 * 365 * 30, metric: 1, value: 0 },
    ]
    const positions = [
      { t: t0, lat: 48.858370123456, lon: 2.294481234567, alt: 35.2, acc: null },
      { t: t0 + 1000.25, lat: 48.8584, lon: 2.2946, alt: null, acc: 4.5 },
      { t: t0 + 2000.001, lat: -33.856784, lon: 151.215297, alt: -12.75, acc: 0 },
    ]
    cols.add(deviceKey, scalars, positions, waiter, {
      seq: 2 ** 40 + 7,
      firstT: t0 - 86_400_000 * 365 * 30,
      lastT: t0 + 2000.001,
      samples: 7,
      encrypted: true,
    })
    cols.add(deviceKey, [{ t: t0 + 5000, metric: 4, value: 99.5 }], [], waiter, {
      seq: 0,
      firstT: t0 + 5000,
      lastT: t0 + 5000,
      samples: 1,
      encrypted: false,
    })
  }
  const rowsOf = async (deviceKey: number) => {
    const q = async (sql: string) => (await db.query(sql, [deviceKey])).rows
    return {
      samples: await q(
        `SELECT time::text, metric, value::text FROM samples WHERE device_key = $1 ORDER BY time, metric`,
      ),
      positions: await q(
        `SELECT time::text, lat::text, lon::text, alt::text, acc::text FROM positions WHERE device_key = $1 ORDER BY time`,
      ),
      tracks: await q(`SELECT t::text, lat::text, lon::text FROM device_tracks WHERE device_key = $1`),
      marks: await q(
        `SELECT seq::text, first_time::text, last_time::text, samples, encrypted FROM signed_batches
         WHERE device_key = $1 ORDER BY seq`,
      ),
    }
  }

  it('samples alone, and a flush with fixes (distance derived in the statement), and batch marks', async () => {
    const written: Awaited<ReturnType<typeof rowsOf>>[] = []
    const derived: number[] = []
    for (const [i, [, arr]] of encodings.entries()) {
      const deviceKey = 900_001 + i
      const cols = new Columns()
      fill(cols, deviceKey)
      const r = await db.transaction((q) => writeTracked(q, cols, false, arr))
      expect(r.positionsIn).toBe(3)
      derived.push(r.derived.flat().length)
      expect((await db.query(INSERT_SIGNED_BATCHES, markParams(cols, arr))).rowCount).toBe(2)
      // samples alone (the statement a flush without fixes uses), at other times
      const alone = new Columns()
      alone.add(deviceKey, [{ t: t0 + 10_000.123, metric: 1, value: 150 }], [], waiter)
      expect((await db.query(PLAIN_SAMPLES, sampleParams(alone, arr))).rowCount).toBe(1)
      written.push(await rowsOf(deviceKey))
    }
    const [viaText, viaBinary] = written
    expect(derived[0]).toBeGreaterThan(0)
    expect(derived[1]).toBe(derived[0])
    // 5 readings of the flush, the one written alone, and the distance derived from the fixes
    expect(viaText?.samples).toHaveLength(6 + (derived[0] ?? 0))
    expect(viaText?.samples.some((s) => String(s.time).includes('.000001'))).toBe(true)
    expect(viaText?.positions).toHaveLength(3)
    expect(viaText?.marks).toEqual([
      expect.objectContaining({ seq: '0', encrypted: false }),
      expect.objectContaining({ seq: String(2 ** 40 + 7), samples: 7, encrypted: true }),
    ])
    expect(viaBinary).toEqual(viaText)
  })
})

// The rows of one flush in column form (what unnest() wants), the statements that write them, and the transaction
// of a flush with GPS fixes, which derives their distance (derive.ts) so fixes and distance commit together or not at all.
import type { Queryable } from '../store/db.js'
import { type DistanceTrack, deriveSegments, type OwnedFix } from './derive.js'
import type { ArrayParams } from './pg-arrays.js'
import type { PositionSample, ScalarSample } from './types.js'

export interface CommitOutcome {
  /** rows of this flush that were new (the rest were duplicates of stored rows) */
  inserted: number
  rows: number
  /** distance rows derived (and committed) from this batch's new fixes */
  derived: readonly ScalarSample[]
}

export interface TrackedResult {
  /** rows of the flush that were new (derived rows not counted) */
  inserted: number
  /** per waiter of the flush: the distance rows derived from its fixes */
  derived: ScalarSample[][]
  samplesIn: number
  positionsIn: number
}

/** A signed batch's bookkeeping row (signed_batches, migration 0016), written in the flush that carries its samples. */
export interface BatchMark {
  seq: number
  /** epoch ms of the batch's first and last stored sample */
  firstT: number
  lastT: number
  samples: number
  encrypted: boolean
}

export interface Waiter {
  resolve(o: CommitOutcome): void
  reject(e: Error): void
  enqueuedAt: number
}

/** One flush worth of rows in column form: what unnest() wants, with no per-row objects. */
export class Columns {
  sTime: number[] = []
  sDev: number[] = []
  sMetric: number[] = []
  sValue: number[] = []
  pTime: number[] = []
  pDev: number[] = []
  pLat: number[] = []
  pLon: number[] = []
  pAlt: (number | null)[] = []
  pAcc: (number | null)[] = []
  /** signed batches' marks (signed_batches): one row per batch, not per sample */
  bDev: number[] = []
  bSeq: number[] = []
  bFirst: number[] = []
  bLast: number[] = []
  bCount: number[] = []
  bEnc: boolean[] = []
  waiters: Waiter[] = []
  /** where each waiter's rows sit, so a refused flush can be split by batch */
  spans: Span[] = []
  get rows(): number {
    return this.sTime.length + this.pTime.length
  }
  add(
    deviceKey: number,
    scalars: readonly ScalarSample[],
    positions: readonly PositionSample[],
    waiter: Waiter,
    mark?: BatchMark,
  ): void {
    const s0 = this.sTime.length
    const p0 = this.pTime.length
    if (mark) {
      this.bDev.push(deviceKey)
      this.bSeq.push(mark.seq)
      this.bFirst.push(mark.firstT)
      this.bLast.push(mark.lastT)
      this.bCount.push(mark.samples)
      this.bEnc.push(mark.encrypted)
    }
    for (const s of scalars) {
      this.sTime.push(s.t)
      this.sDev.push(deviceKey)
      this.sMetric.push(s.metric)
      this.sValue.push(s.value)
    }
    for (const p of positions) {
      this.pTime.push(p.t)
      this.pDev.push(deviceKey)
      this.pLat.push(p.lat)
      this.pLon.push(p.lon)
      this.pAlt.push(p.alt)
      this.pAcc.push(p.acc)
    }
    this.spans.push({ s0, s1: this.sTime.length, p0, p1: this.pTime.length, mark })
    this.waiters.push(waiter)
  }
}

// to_timestamp(float8) rounds to the microsecond, so integer epoch milliseconds map to exactly one timestamptz.
// commit_seq (migration 0014, delta sync by commit order) is the transaction id, computed once per statement (an
// InitPlan) rather than per row as the column default would.
export const INSERT_SAMPLES = `INSERT INTO samples (time, device_key, metric, value, commit_seq)
  SELECT to_timestamp(t / 1000.0), d, m, v, (SELECT pg_current_xact_id()::text::bigint)
  FROM unnest($1::float8[], $2::int4[], $3::int2[], $4::float8[]) AS u(t, d, m, v)
  ON CONFLICT DO NOTHING`
export const INSERT_POSITIONS = `INSERT INTO positions (time, device_key, lat, lon, alt, acc)
  SELECT to_timestamp(t / 1000.0), d, la, lo, al, ac
  FROM unnest($1::float8[], $2::int4[], $3::float8[], $4::float8[], $5::float4[], $6::float4[]) AS u(t, d, la, lo, al, ac)
  ON CONFLICT DO NOTHING`

export const INSERT_SIGNED_BATCHES = `INSERT INTO signed_batches (device_key, seq, first_time, last_time, samples, encrypted)
  SELECT d, s, to_timestamp(f / 1000.0), to_timestamp(l / 1000.0), n, e
  FROM unnest($1::int4[], $2::int8[], $3::float8[], $4::float8[], $5::int4[], $6::bool[]) AS u(d, s, f, l, n, e)
  ON CONFLICT DO NOTHING`

// Without ON CONFLICT: PostgreSQL's speculative insertion for ON CONFLICT costs ~45 % more per row (4.5 vs 8 µs/row at
// 10k-row statements here), and duplicates that reach the database are rare (the seq window answers redeliveries).
// A plain statement that hits the unique key fails whole and is re-run with ON CONFLICT (see write()).
export const PLAIN_SAMPLES = INSERT_SAMPLES.replace(/\s*ON CONFLICT DO NOTHING$/, '')
export const PLAIN_POSITIONS = INSERT_POSITIONS.replace(/\s*ON CONFLICT DO NOTHING$/, '')
/** only the fixes this statement stored: distance is derived from those alone */
const UPSERT_POSITIONS_RETURNING = `${INSERT_POSITIONS} RETURNING device_key AS d, (extract(epoch FROM time) * 1000)::float8 AS t`
/**
 * Locks the flush's devices' track rows (creating missing ones), in device order so two flushes never deadlock, and
 * returns the newest committed fix of each. DO UPDATE (a no-op change) is what locks and returns an existing row.
 */
const LOCK_TRACKS = `INSERT INTO device_tracks (device_key) SELECT unnest($1::int4[])
  ON CONFLICT (device_key) DO UPDATE SET device_key = EXCLUDED.device_key RETURNING device_key, t, lat, lon`
const UPDATE_TRACKS = `UPDATE device_tracks dt SET t = u.t, lat = u.la, lon = u.lo
  FROM unnest($1::int4[], $2::float8[], $3::float8[], $4::float8[]) AS u(d, t, la, lo) WHERE dt.device_key = u.d`

export function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '23505'
}

/**
 * The transaction of a flush with fixes: lock the devices' tracks, store the fixes, derive distance from the ones that
 * were new, store it with the other samples, move the tracks. Throws a unique violation when `upsert` is false and a
 * row is there already (the caller re-runs it with ON CONFLICT).
 */
export async function writeTracked(
  q: Queryable,
  cols: Columns,
  upsert: boolean,
  arr: ArrayParams,
): Promise<TrackedResult> {
  const devices = [...new Set(cols.pDev)].sort((a, b) => a - b)
  const locked = await q.query<{ device_key: number; t: number | null; lat: number | null; lon: number | null }>(
    LOCK_TRACKS,
    [arr.int4(devices)],
  )
  const tracks = new Map<number, DistanceTrack>()
  for (const r of locked.rows) {
    const t = r.t === null ? null : Number(r.t)
    tracks.set(Number(r.device_key), t === null ? {} : { last: { t, lat: Number(r.lat), lon: Number(r.lon) } })
  }
  const params = positionParams(cols, arr)
  const owner = ownersOfPositions(cols)
  // Which fixes are new: all of them after a plain INSERT, those RETURNING names after ON CONFLICT DO NOTHING.
  let fresh: number[]
  if (upsert) {
    const index = new Map<string, number>()
    for (let k = cols.pTime.length - 1; k >= 0; k--) index.set(fixKey(cols.pDev[k], cols.pTime[k]), k)
    const res = await q.query<{ d: number; t: number }>(UPSERT_POSITIONS_RETURNING, params)
    fresh = []
    for (const r of res.rows) {
      const k = index.get(fixKey(Number(r.d), Number(r.t)))
      if (k !== undefined) fresh.push(k)
    }
  } else {
    await q.query(PLAIN_POSITIONS, params)
    fresh = cols.pTime.map((_t, k) => k)
  }
  const byDevice = new Map<number, OwnedFix[]>()
  for (const k of fresh) {
    const d = cols.pDev[k] as number
    let list = byDevice.get(d)
    if (!list) {
      list = []
      byDevice.set(d, list)
    }
    list.push({
      t: cols.pTime[k] as number,
      lat: cols.pLat[k] as number,
      lon: cols.pLon[k] as number,
      owner: owner[k] as number,
    })
  }
  const derived: ScalarSample[][] = cols.waiters.map(() => [])
  // The derived rows go in the same statement as the flush's samples, appended by the encoder: the flush's own
  // columns stay as they were (a conflict retry re-runs this with them) and are not copied.
  const dTime: number[] = []
  const dDev: number[] = []
  const dMetric: number[] = []
  const dValue: number[] = []
  const moved: { d: number[]; t: number[]; lat: number[]; lon: number[] } = { d: [], t: [], lat: [], lon: [] }
  for (const [d, fixes] of byDevice) {
    const track = tracks.get(d) ?? {}
    const before = track.last?.t
    deriveSegments(fixes, track, (o, smp) => {
      ;(derived[o] as ScalarSample[]).push(smp)
      dTime.push(smp.t)
      dDev.push(d)
      dMetric.push(smp.metric)
      dValue.push(smp.value)
    })
    if (track.last && track.last.t !== before) {
      moved.d.push(d)
      moved.t.push(track.last.t)
      moved.lat.push(track.last.lat)
      moved.lon.push(track.last.lon)
    }
  }
  const derivedRows = dTime.length
  let samplesIn = 0
  if (cols.sTime.length + derivedRows > 0) {
    const res = await q.query(
      upsert ? INSERT_SAMPLES : PLAIN_SAMPLES,
      sampleParams(cols, arr, { t: dTime, d: dDev, m: dMetric, v: dValue }),
    )
    samplesIn = res.rowCount
  }
  if (moved.d.length > 0) {
    await q.query(UPDATE_TRACKS, [arr.int4(moved.d), arr.float8(moved.t), arr.float8(moved.lat), arr.float8(moved.lon)])
  }
  const inserted = Math.max(0, samplesIn - derivedRows) + fresh.length
  return { inserted, derived, samplesIn, positionsIn: fresh.length }
}

/** The parameters of INSERT_SAMPLES / PLAIN_SAMPLES for a flush's samples, and the rows derived from its fixes after
 *  them (appended by the encoder, so the flush's own columns are neither copied nor changed). */
export function sampleParams(
  cols: Columns,
  arr: ArrayParams,
  derived?: { t: number[]; d: number[]; m: number[]; v: number[] },
): unknown[] {
  return [
    arr.float8(cols.sTime, derived?.t),
    arr.int4(cols.sDev, derived?.d),
    arr.int2(cols.sMetric, derived?.m),
    arr.float8(cols.sValue, derived?.v),
  ]
}

/** The parameters of INSERT_POSITIONS / PLAIN_POSITIONS for a flush's fixes. */
export function positionParams(cols: Columns, arr: ArrayParams): unknown[] {
  return [
    arr.float8(cols.pTime),
    arr.int4(cols.pDev),
    arr.float8(cols.pLat),
    arr.float8(cols.pLon),
    arr.float4(cols.pAlt),
    arr.float4(cols.pAcc),
  ]
}

/** The parameters of INSERT_SIGNED_BATCHES for a flush's batch marks. */
export function markParams(cols: Columns, arr: ArrayParams): unknown[] {
  return [
    arr.int4(cols.bDev),
    arr.int8(cols.bSeq),
    arr.float8(cols.bFirst),
    arr.float8(cols.bLast),
    arr.int4(cols.bCount),
    arr.bool(cols.bEnc),
  ]
}

/** Splits a merged flush in two halves by waiter; each waiter's rows are contiguous (its span). */
export function splitColumns(cols: Columns): Columns[] {
  if (cols.waiters.length < 2) return [cols]
  const mid = Math.floor(cols.waiters.length / 2)
  return [slice(cols, 0, mid), slice(cols, mid, cols.waiters.length)]
}

/** The waiter (batch) each position of a flush belongs to. */
function ownersOfPositions(cols: Columns): number[] {
  const out = new Array<number>(cols.pTime.length)
  cols.spans.forEach((sp, i) => {
    for (let k = sp.p0; k < sp.p1; k++) out[k] = i
  })
  return out
}

/** device and time to the microsecond (what timestamptz keeps), for matching RETURNING rows to the flush's fixes */
function fixKey(device: number | undefined, t: number | undefined): string {
  return `${device}:${Math.round((t ?? 0) * 1000)}`
}

interface Span {
  s0: number
  s1: number
  p0: number
  p1: number
  mark: BatchMark | undefined
}

function slice(cols: Columns, from: number, to: number): Columns {
  const out = new Columns()
  for (let i = from; i < to; i++) {
    const sp = cols.spans[i] as Span
    const scalars: ScalarSample[] = []
    const positions: PositionSample[] = []
    for (let k = sp.s0; k < sp.s1; k++) {
      scalars.push({ t: cols.sTime[k] as number, metric: cols.sMetric[k] as number, value: cols.sValue[k] as number })
    }
    for (let k = sp.p0; k < sp.p1; k++) {
      positions.push({
        t: cols.pTime[k] as number,
        lat: cols.pLat[k] as number,
        lon: cols.pLon[k] as number,
        alt: cols.pAlt[k] ?? null,
        acc: cols.pAcc[k] ?? null,
      })
    }
    const dev = (sp.s1 > sp.s0 ? cols.sDev[sp.s0] : cols.pDev[sp.p0]) as number
    out.add(dev, scalars, positions, cols.waiters[i] as Waiter, sp.mark)
  }
  return out
}

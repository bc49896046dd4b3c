// The rows of one flush in column form (what unnest() wants) and the statements that write them; a flush with GPS
// fixes is one statement that also derives their distance, so fixes and distance commit together or not at all.
import type { Queryable } from '../store/db.js'
import { DERIVED_METRICS } from './derive.js'
import type { ArrayParams } from './pg-arrays.js'
import type { PositionSample, ScalarSample } from './types.js'
import { EARTH_RADIUS_M } from './validate-speed.js'

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
//
// The commit log (migration 0019): one sample_commits row per device and metric of a statement, with the time range it
// wrote, instead of a per-row (device_key, commit_seq) index entry on samples. Sync reads readings in commit order
// through it (src/outputs/sync-order.ts). Every statement that stores samples a sync must see writes its log rows in
// the same statement (COMMIT_LOG), so both commit or neither does. Measured on the embedded store at saturation
// (bench/ingest.ts): the per-row index was a quarter of each flush's cost (docs/benchmarks.md).
// ON CONFLICT DO UPDATE: two statements of one transaction (an import) may log the same device and metric.
export const COMMIT_LOG = (rows: string) => `INSERT INTO sample_commits (device_key, metric, commit_seq, t_min, t_max)
    SELECT d, m, (SELECT pg_current_xact_id()::text::bigint), to_timestamp(min(t) / 1000.0), to_timestamp(max(t) / 1000.0)
    FROM ${rows} GROUP BY d, m
    ON CONFLICT (device_key, commit_seq, metric)
      DO UPDATE SET t_min = least(sample_commits.t_min, EXCLUDED.t_min), t_max = greatest(sample_commits.t_max, EXCLUDED.t_max)`
export const INSERT_SAMPLES = `WITH u AS MATERIALIZED (
    SELECT * FROM unnest($1::float8[], $2::int4[], $3::int2[], $4::float8[]) AS u(t, d, m, v)
  ),
  log AS (${COMMIT_LOG('u')})
  INSERT INTO samples (time, device_key, metric, value, commit_seq)
  SELECT to_timestamp(t / 1000.0), d, m, v, (SELECT pg_current_xact_id()::text::bigint) FROM u
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
/**
 * A flush with fixes as one statement (autocommit, so atomic without BEGIN/COMMIT): one round trip instead of six
 * (bench/compare.ts: broker CPU per message ×4.3 → ×3.2–3.5 of bare Aedes, docs/benchmarks.md). In order:
 * - lk: lock the flush's devices' track rows, in device order so two flushes do not deadlock on them (LockRows
 *   above the Sort), and read each newest committed fix (FOR UPDATE re-reads a row a concurrent flush moved, once
 *   that flush commits);
 * - ins: store the fixes, only after every lock is held (the InitPlan on lk runs before the first row);
 * - fresh: the fixes this statement stored (all after a plain INSERT, those RETURNING names after ON CONFLICT);
 * - seg/dist: distance from the track's fix through the fresh fixes newer than it, per device in time order, with
 *   haversineMeters' formula and constants (validate-speed.ts);
 * - r/s: the flush's samples and the distance rows in one INSERT, log: their commit-log rows (COMMIT_LOG);
 *   mv: move each track to its newest fresh fix.
 * A track row must exist before (ensureTracks): a row this statement inserted would not be visible to its own lock.
 * mv upserts anyway, so a track deleted meanwhile (erasure) starts again from nothing, as a first fix does.
 * Returns the distance rows (o = the fix's batch in the flush) and one summary row (o = -1: samples, fresh fixes).
 */
export function trackedStatement(upsert: boolean): string {
  const onConflict = upsert ? ' ON CONFLICT DO NOTHING' : ''
  const fresh = upsert
    ? `SELECT DISTINCT ON (f.d, f.t) f.d, f.t, f.la, f.lo, f.o FROM fix f
         JOIN ins ON ins.device_key = f.d AND ins.time = to_timestamp(f.t / 1000.0) ORDER BY f.d, f.t, f.n`
    : 'SELECT d, t, la, lo, o FROM fix'
  return `WITH fix AS MATERIALIZED (
    SELECT * FROM unnest($1::float8[], $2::int4[], $3::float8[], $4::float8[], $5::float4[], $6::float4[], $7::int4[])
      WITH ORDINALITY AS u(t, d, la, lo, al, ac, o, n)
  ),
  lk AS MATERIALIZED (
    SELECT dt.device_key AS d, dt.t, dt.lat, dt.lon FROM device_tracks dt
    WHERE dt.device_key = ANY (ARRAY(SELECT DISTINCT d FROM fix)) ORDER BY dt.device_key FOR UPDATE
  ),
  ins AS (
    INSERT INTO positions (time, device_key, lat, lon, alt, acc)
    SELECT to_timestamp(t / 1000.0), d, la, lo, al, ac FROM fix WHERE (SELECT count(*) FROM lk) >= 0${onConflict}
    ${upsert ? 'RETURNING device_key, time' : ''}
  ),
  fresh AS MATERIALIZED (${fresh}),
  seg AS MATERIALIZED (
    SELECT d, t, la, lo, o, lag(t) OVER w AS pt, lag(la) OVER w AS pla, lag(lo) OVER w AS plo FROM (
      SELECT f.d, f.t, f.la, f.lo, f.o FROM fresh f LEFT JOIN lk ON lk.d = f.d WHERE lk.t IS NULL OR f.t > lk.t
      UNION ALL SELECT d, t, lat, lon, -1 FROM lk WHERE t IS NOT NULL
    ) AS a WINDOW w AS (PARTITION BY d ORDER BY t)
  ),
  dist AS MATERIALIZED (
    SELECT d, t, o, 2 * ${EARTH_RADIUS_M} * asin(least(1, sqrt(
        sin((la - pla) * (pi() / 180) / 2) ^ 2
        + cos(pla * (pi() / 180)) * cos(la * (pi() / 180)) * sin((lo - plo) * (pi() / 180) / 2) ^ 2
      ))) AS v
    FROM seg WHERE o >= 0 AND pt IS NOT NULL
  ),
  r AS MATERIALIZED (
    SELECT * FROM unnest($8::float8[], $9::int4[], $10::int2[], $11::float8[]) AS u(t, d, m, v)
    UNION ALL SELECT t, d, ${DERIVED_METRICS.distance}::int2, v FROM dist
  ),
  s AS (
    INSERT INTO samples (time, device_key, metric, value, commit_seq)
    SELECT to_timestamp(t / 1000.0), d, m, v, (SELECT pg_current_xact_id()::text::bigint) FROM r${onConflict}
    RETURNING 1
  ),
  log AS (${COMMIT_LOG('r')}),
  mv AS (
    INSERT INTO device_tracks AS dt (device_key, t, lat, lon)
    SELECT DISTINCT ON (d) d, t, la, lo FROM seg WHERE o >= 0 ORDER BY d, t DESC
    ON CONFLICT (device_key) DO UPDATE SET t = EXCLUDED.t, lat = EXCLUDED.lat, lon = EXCLUDED.lon
  )
  SELECT o, t, v FROM dist
  UNION ALL SELECT -1, (SELECT count(*) FROM s)::float8, (SELECT count(*) FROM fresh)::float8`
}
const TRACKED = trackedStatement(false)
const TRACKED_UPSERT = trackedStatement(true)
/** Creates missing track rows; committed on its own, before the flush statement that locks them. */
const ENSURE_TRACKS = `INSERT INTO device_tracks (device_key) SELECT unnest($1::int4[]) ON CONFLICT DO NOTHING`

/** Devices whose track row is known to exist (one writer's memory; bounded: forgetting only costs a no-op INSERT). */
export class KnownTracks {
  readonly #keys = new Set<number>()
  constructor(private readonly max = 1_000_000) {}
  /** the devices of `devices` not known yet */
  missing(devices: Iterable<number>): number[] {
    const out: number[] = []
    for (const d of devices) if (!this.#keys.has(d)) out.push(d)
    return out
  }
  add(devices: readonly number[]): void {
    if (this.#keys.size + devices.length > this.max) this.#keys.clear()
    for (const d of devices) this.#keys.add(d)
  }
}

/** The track rows the flush statement locks: created (and committed) first for devices not seen before. */
export async function ensureTracks(q: Queryable, cols: Columns, known: KnownTracks, arr: ArrayParams): Promise<void> {
  const missing = known.missing(new Set(cols.pDev))
  if (missing.length === 0) return
  await q.query(ENSURE_TRACKS, [arr.int4(missing)])
  known.add(missing)
}

/**
 * A flush with fixes (trackedStatement): stores the fixes, derives distance from the ones that were new, stores it with
 * the other samples and moves the tracks, atomically. Throws a unique violation when `upsert` is false and a row is
 * there already (the caller re-runs it with ON CONFLICT). Call ensureTracks first.
 */
export async function writeTracked(
  q: Queryable,
  cols: Columns,
  upsert: boolean,
  arr: ArrayParams,
): Promise<TrackedResult> {
  const res = await q.query<{ o: number; t: number; v: number }>(upsert ? TRACKED_UPSERT : TRACKED, [
    ...positionParams(cols, arr),
    arr.int4(ownersOfPositions(cols)),
    ...sampleParams(cols, arr),
  ])
  const derived: ScalarSample[][] = cols.waiters.map(() => [])
  let samplesIn = 0
  let positionsIn = 0
  let derivedRows = 0
  for (const r of res.rows) {
    const o = Number(r.o)
    if (o < 0) {
      samplesIn = Number(r.t)
      positionsIn = Number(r.v)
      continue
    }
    derivedRows++
    derived[o]?.push({ metric: DERIVED_METRICS.distance, t: Number(r.t), value: Number(r.v) })
  }
  // in time order per batch, as they were derived
  for (const list of derived) if (list.length > 1) list.sort((x, y) => x.t - y.t)
  const inserted = Math.max(0, samplesIn - derivedRows) + positionsIn
  return { inserted, derived, samplesIn, positionsIn }
}

/** The parameters of INSERT_SAMPLES / PLAIN_SAMPLES (and of the tracked statement's samples) for a flush. */
export function sampleParams(cols: Columns, arr: ArrayParams): unknown[] {
  return [arr.float8(cols.sTime), arr.int4(cols.sDev), arr.int2(cols.sMetric), arr.float8(cols.sValue)]
}

/** The parameters of INSERT_POSITIONS (and of the tracked statement's fixes) for a flush. */
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

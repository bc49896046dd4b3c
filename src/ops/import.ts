// `pulsegate users import`: a person's history from a file (our own export, or NDJSON/CSV/GPX from their phone) into
// the user's devices. Records are read as a stream, judged by the live pipeline's validateBatch (plausibility bounds,
// speed, in-batch duplicates; the late-arrival window does not apply to history) and committed in large
// INSERT … ON CONFLICT DO NOTHING statements (the group-commit writer's SQL), so a second import adds nothing and
// export → erase → import restores the same rows. Imported history triggers no alerts or live outputs.
import { Readable } from 'node:stream'
import { INSERT_POSITIONS, INSERT_SAMPLES, numericArrayLiteral } from '../pipeline/commit.js'
import { DERIVED_METRICS } from '../pipeline/derive.js'
import { METRICS } from '../pipeline/types.js'
import { DEFAULT_RULES, type DeviceTrack, type ValidationRules, validateBatch } from '../pipeline/validate.js'
import type { Db } from '../store/db.js'
import type { AuditActor, AuditSink } from './audit-types.js'
import { PortabilityError } from './errors.js'
import { READINGS_DIR, tarEntries } from './formats/bundle.js'
import { csvItems } from './formats/csv.js'
import { gpxItems, MAX_GPX_BYTES } from './formats/gpx.js'
import { lines } from './formats/ndjson.js'
import { type ImportItem, parseDataPoint } from './formats/omh.js'
import { type DeviceRef, userDevices } from './user-data.js'

export const IMPORT_FORMATS = ['ndjson', 'csv', 'gpx', 'bundle'] as const
export type ImportFormat = (typeof IMPORT_FORMATS)[number]

export interface ImportOptions {
  userId: string
  /** the device rows are attributed to unless a row names another device of the same user */
  deviceId: string
  /** default: told from the first bytes (tar header → bundle, `<` → GPX, `{` → NDJSON, else CSV) */
  format?: ImportFormat
  /** plausibility rules besides the late-arrival window, which imports do not have (defaults: the pipeline's) */
  rules?: Partial<Pick<ValidationRules, 'maxFutureSkewMs' | 'maxFootSpeedMps'>>
  /** rows per INSERT statement */
  batchRows?: number
  maxGpxBytes?: number
  audit?: AuditSink
  actor?: AuditActor
}

export interface ImportReport {
  format: ImportFormat
  /** rows written (samples + positions) */
  imported: number
  rows: { samples: number; positions: number }
  /** readings already stored, or repeated in the file */
  duplicates: number
  /** readings or records refused, by reason (docs/readings.md reasons, plus the file-level ones in docs/privacy.md) */
  refused: Record<string, number>
}

export const DEFAULT_IMPORT_BATCH_ROWS = 50_000
/** samples judged per validateBatch call (per device) */
const VALIDATE_CHUNK = 5_000
/** the continuous aggregates' source metrics (migrations/0004_rollups.tsdb.sql) */
const ROLLUP_METRICS = new Set<number>([METRICS.hr, METRICS.steps, DERIVED_METRICS.distance])

function detect(head: Buffer): ImportFormat {
  if (head.length >= 262 && head.toString('latin1', 257, 262) === 'ustar') return 'bundle'
  const text = head
    .toString('utf8')
    .replace(/^\uFEFF/, '')
    .trimStart()
  if (text.startsWith('<')) return 'gpx'
  if (text.startsWith('{')) return 'ndjson'
  return 'csv'
}

/** Reads the first bytes to tell the format, and gives back a stream that still starts at the beginning. */
async function sniff(input: Readable): Promise<{ format: ImportFormat; stream: Readable }> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer | string>
  const head: Buffer[] = []
  let size = 0
  let ended = false
  while (size < 512) {
    const r = await it.next()
    if (r.done) {
      ended = true
      break
    }
    const b = Buffer.from(r.value)
    head.push(b)
    size += b.length
  }
  const first = Buffer.concat(head)
  async function* rest(): AsyncGenerator<Buffer> {
    if (first.length > 0) yield first
    if (ended) return
    for (let r = await it.next(); !r.done; r = await it.next()) yield Buffer.from(r.value)
  }
  return { format: detect(first), stream: Readable.from(rest(), { objectMode: false }) }
}

async function readWhole(stream: Readable, max: number): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const c of stream) {
    size += (c as Buffer).length
    if (size > max) throw new PortabilityError(`a GPX file is read whole and may not exceed ${max} bytes`)
    chunks.push(c as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

async function* ndjsonItems(stream: AsyncIterable<Buffer>): AsyncGenerator<ImportItem> {
  for await (const l of lines(stream)) yield l === null ? { refused: 'line_too_long' } : parseDataPoint(l)
}

async function* itemsOf(format: ImportFormat, stream: Readable, maxGpxBytes: number): AsyncGenerator<ImportItem> {
  if (format === 'ndjson') yield* ndjsonItems(stream)
  else if (format === 'csv') yield* csvItems(stream)
  else if (format === 'gpx') yield* gpxItems(await readWhole(stream, maxGpxBytes))
  else {
    // A bundle's readings are its per-metric NDJSON files; the CSV and GPX copies of the same rows are skipped.
    let any = false
    for await (const e of tarEntries(stream)) {
      if (!e.name.startsWith(READINGS_DIR) || !e.name.endsWith('.ndjson')) continue
      any = true
      yield* ndjsonItems(e.stream)
    }
    if (!any) throw new PortabilityError(`not a pulsegate bundle: no ${READINGS_DIR}*.ndjson entries`)
  }
}

/** Distance is derived from positions live, so validateBatch has no rule for it: time as for readings, value ≥ 0. */
function distanceRefusal(t: unknown, v: unknown, maxT: number): string | null {
  if (typeof t !== 'number' || !Number.isSafeInteger(t)) return 'bad_timestamp'
  if (t > maxT) return 'future_timestamp'
  if (typeof v !== 'number' || !Number.isFinite(v)) return 'wrong_type'
  return v < 0 ? 'out_of_range' : null
}

/** Rows waiting for the next statement, in the column form unnest() takes. */
class Columns {
  sT: number[] = []
  sD: number[] = []
  sM: number[] = []
  sV: number[] = []
  pT: number[] = []
  pD: number[] = []
  pLat: number[] = []
  pLon: number[] = []
  pAlt: (number | null)[] = []
  pAcc: (number | null)[] = []
  get rows(): number {
    return this.sT.length + this.pT.length
  }
}

class Importer {
  readonly report: Omit<ImportReport, 'format'> = {
    imported: 0,
    rows: { samples: 0, positions: 0 },
    duplicates: 0,
    refused: {},
  }
  private readonly pending = new Map<number, { samples: Record<string, unknown>[]; track: DeviceTrack }>()
  private cols = new Columns()
  /** time span of imported rollup metrics, for refreshing the continuous aggregates */
  private rollupSpan: { min: number; max: number } | null = null

  constructor(
    private readonly db: Db,
    private readonly target: DeviceRef,
    private readonly devices: ReadonlyMap<string, DeviceRef>,
    private readonly rules: Omit<ValidationRules, 'now'>,
    private readonly batchRows: number,
  ) {}

  private refuse(reason: string, n = 1): void {
    this.report.refused[reason] = (this.report.refused[reason] ?? 0) + n
  }

  async add(item: ImportItem): Promise<void> {
    if ('refused' in item) {
      this.refuse(item.refused)
      return
    }
    // A row naming another device of this user goes to it; any other name (another app's, another user's) does not.
    const dev = (item.device !== null ? this.devices.get(item.device) : undefined) ?? this.target
    const s = item.sample
    if ('distance' in s) {
      this.distance(dev.key, s.t, s.distance)
      delete s.distance
      if (Object.keys(s).length === 1) return
    }
    let p = this.pending.get(dev.key)
    if (!p) {
      p = { samples: [], track: {} }
      this.pending.set(dev.key, p)
    }
    p.samples.push(s)
    if (p.samples.length >= VALIDATE_CHUNK) await this.judge(dev.key)
  }

  private distance(deviceKey: number, t: unknown, v: unknown): void {
    const reason = distanceRefusal(t, v, Date.now() + this.rules.maxFutureSkewMs)
    if (reason !== null) this.refuse(reason)
    else this.pushScalar(deviceKey, DERIVED_METRICS.distance, t as number, v as number)
  }

  private pushScalar(deviceKey: number, metric: number, t: number, value: number): void {
    const c = this.cols
    c.sT.push(t)
    c.sD.push(deviceKey)
    c.sM.push(metric)
    c.sV.push(value)
    if (ROLLUP_METRICS.has(metric)) {
      const span = this.rollupSpan
      if (span === null) this.rollupSpan = { min: t, max: t }
      else {
        if (t < span.min) span.min = t
        if (t > span.max) span.max = t
      }
    }
  }

  private async judge(deviceKey: number): Promise<void> {
    const p = this.pending.get(deviceKey)
    if (!p || p.samples.length === 0) return
    const v = validateBatch({ seq: 0, samples: p.samples, format: 'json' }, { ...this.rules, now: Date.now() }, p.track)
    p.samples = []
    for (const r of v.rejections) this.refuse(r.reason)
    this.report.duplicates += v.inBatchDuplicates
    for (const s of v.scalars) this.pushScalar(deviceKey, s.metric, s.t, s.value)
    const c = this.cols
    for (const pos of v.positions) {
      c.pT.push(pos.t)
      c.pD.push(deviceKey)
      c.pLat.push(pos.lat)
      c.pLon.push(pos.lon)
      c.pAlt.push(pos.alt)
      c.pAcc.push(pos.acc)
    }
    if (c.rows >= this.batchRows) await this.flush()
  }

  private async flush(): Promise<void> {
    const c = this.cols
    this.cols = new Columns()
    if (c.sT.length > 0) {
      const res = await this.db.query(INSERT_SAMPLES, [c.sT, c.sD, c.sM, c.sV].map(numericArrayLiteral))
      this.report.rows.samples += res.rowCount
      this.report.duplicates += c.sT.length - res.rowCount
    }
    if (c.pT.length > 0) {
      const res = await this.db.query(
        INSERT_POSITIONS,
        [c.pT, c.pD, c.pLat, c.pLon, c.pAlt, c.pAcc].map(numericArrayLiteral),
      )
      this.report.rows.positions += res.rowCount
      this.report.duplicates += c.pT.length - res.rowCount
    }
    this.report.imported = this.report.rows.samples + this.report.rows.positions
  }

  async finish(): Promise<void> {
    for (const key of this.pending.keys()) await this.judge(key)
    await this.flush()
    await this.refreshRollups()
  }

  /**
   * The rollups' refresh policies look back hours, not months: history imported into older buckets would never be
   * materialised. Refresh the imported span (TimescaleDB only; these cannot run inside a transaction).
   */
  private async refreshRollups(): Promise<void> {
    const span = this.rollupSpan
    if (span === null || this.report.rows.samples === 0) return
    const has = await this.db.query<{ ok: boolean }>(`SELECT to_regclass('samples_1m') IS NOT NULL AS ok`)
    if (has.rows[0]?.ok !== true) return
    for (const [view, bucket] of [
      ['samples_1m', 60_000],
      ['samples_1h', 3_600_000],
    ] as const) {
      const from = new Date(Math.floor(span.min / bucket) * bucket).toISOString()
      const to = new Date((Math.floor(span.max / bucket) + 1) * bucket).toISOString()
      await this.db.exec(`CALL refresh_continuous_aggregate('${view}', '${from}', '${to}')`)
    }
  }
}

/**
 * Imports `input` for the user. Throws PortabilityError for an unknown user, a device that is not theirs, or a file
 * that cannot be read; whole batches committed before a broken part of a file stay (running it again is harmless).
 */
export async function importUser(db: Db, input: Readable, opts: ImportOptions): Promise<ImportReport> {
  const devices = await userDevices(db, opts.userId)
  if (devices === null) throw new PortabilityError(`unknown user ${opts.userId}`, 'not_found')
  const target = devices.find((d) => d.id === opts.deviceId)
  if (!target) throw new PortabilityError(`device ${opts.deviceId} is not registered to user ${opts.userId}`)
  if (opts.format !== undefined && !(IMPORT_FORMATS as readonly string[]).includes(opts.format)) {
    throw new PortabilityError(`unknown import format ${JSON.stringify(opts.format)} (${IMPORT_FORMATS.join(', ')})`)
  }
  const sniffed = await sniff(input)
  const format = opts.format ?? sniffed.format
  const rules = {
    // Imports bring history: no late-arrival window (validateBatch wants a finite one; this one reaches before 1970).
    lateWindowMs: Number.MAX_SAFE_INTEGER,
    maxFutureSkewMs: opts.rules?.maxFutureSkewMs ?? DEFAULT_RULES.maxFutureSkewMs,
    maxFootSpeedMps: opts.rules?.maxFootSpeedMps ?? DEFAULT_RULES.maxFootSpeedMps,
  }
  const importer = new Importer(
    db,
    target,
    new Map(devices.map((d) => [d.id, d])),
    rules,
    opts.batchRows ?? DEFAULT_IMPORT_BATCH_ROWS,
  )
  let failure: Error | null = null
  try {
    const items = itemsOf(format, sniffed.stream, opts.maxGpxBytes ?? MAX_GPX_BYTES)
    for (;;) {
      let next: IteratorResult<ImportItem>
      try {
        next = await items.next()
      } catch (err) {
        if (err instanceof PortabilityError) throw err
        throw new PortabilityError(`the ${format} file could not be read: ${(err as Error).message}`)
      }
      if (next.done) break
      await importer.add(next.value)
    }
    await importer.finish()
  } catch (err) {
    failure = err as Error
  }
  const report: ImportReport = { format, ...importer.report }
  await opts.audit?.record({
    actor: opts.actor ?? { role: 'cli', id: null },
    action: 'import',
    subject: opts.userId,
    purpose: 'import',
    details: {
      format,
      device: opts.deviceId,
      imported: report.imported,
      duplicates: report.duplicates,
      refused: Object.values(report.refused).reduce((a, b) => a + b, 0),
      outcome: failure ? 'failed' : 'complete',
    },
  })
  if (failure) {
    if (failure instanceof PortabilityError && report.imported > 0) {
      throw new PortabilityError(`${failure.message} (${report.imported} rows were committed before it)`, failure.kind)
    }
    throw failure
  }
  return report
}

// `pulsegate users export`: one person's readings (and, in a bundle, their consent history, alerts, recommendations
// and audit trail) as Open mHealth NDJSON, CSV, GPX 1.1 or a tar bundle with a manifest of SHA-256 hashes.
// Streamed: pages of `pageRows` rows (keyset, src/ops/user-data.ts) go out through a sink that waits for 'drain', so
// memory does not grow with the history (10M rows need what 10k need). Formats and guarantees: docs/privacy.md.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Writable } from 'node:stream'
import type { Queryable } from '../store/db.js'
import type { AuditActor, AuditSink } from './audit-types.js'
import { PortabilityError } from './errors.js'
import { BUNDLE_FORMAT, BUNDLE_FORMAT_VERSION, type Manifest, mediaType, writeBundle } from './formats/bundle.js'
import {
  type Cell,
  csvHeader,
  csvRows,
  LONG_COLUMNS,
  longPosition,
  longSample,
  metricColumns,
  POSITION_COLUMNS,
} from './formats/csv.js'
import { GPX_CLOSE, GPX_TRACK_CLOSE, gpxOpen, gpxPoint, gpxTrackOpen } from './formats/gpx.js'
import { formatFor, GEOPOSITION, isoTime, METRIC_FORMATS, type MetricFormat, OmhLines } from './formats/omh.js'
import { PartFile, type PartInfo, TextSink } from './sink.js'
import {
  type DeviceRef,
  DEFAULT_PAGE_ROWS,
  findSideTable,
  metricsOf,
  type PositionRow,
  positionPages,
  previousSampleUs,
  type SampleRow,
  samplePages,
  sideTableRows,
  type TimeRange,
  userDevices,
} from './user-data.js'

export const EXPORT_FORMATS = ['ndjson', 'csv', 'gpx', 'bundle'] as const
export type ExportFormat = (typeof EXPORT_FORMATS)[number]

export interface ExportOptions {
  userId: string
  format: ExportFormat
  /** readings (samples, positions) in [from, to); a bundle's consents, alerts, recommendations and audit trail are whole */
  range?: TimeRange
  pageRows?: number
  /** where a bundle's parts are staged (default: the OS temp dir); removed afterwards */
  tmpDir?: string
  audit?: AuditSink
  actor?: AuditActor
  now?: () => number
}

export interface ExportReport {
  format: ExportFormat
  userId: string
  /** rows written per readings key (`hr`, `steps`, …) and `positions`: equal to the database's */
  rows: Record<string, number>
  total: number
  /** bytes written to the output */
  bytes: number
  /** a bundle's files, as in its manifest */
  files?: PartInfo[]
}

/** The tables a bundle carries besides the readings, found by name (some come from other parts of pulsegate). */
const SIDE_FILES = [
  { file: 'consents.ndjson', tables: ['consents'], users: ['user_id'] },
  { file: 'alerts.ndjson', tables: ['alerts'], users: ['user_id'] },
  { file: 'recommendations.ndjson', tables: ['recommendations'], users: ['user_id', 'subject'] },
  // synced preferences, the privacy zones among them (a home's centre is personal data)
  { file: 'preferences.ndjson', tables: ['user_preferences'], users: ['user_id'] },
  { file: 'audit.ndjson', tables: ['audit_log', 'audit'], users: ['subject', 'subject_pseudo', 'user_id'] },
] as const

interface Walk {
  db: Queryable
  userId: string
  devices: DeviceRef[]
  range: TimeRange
  pageRows: number
  rows: Record<string, number>
}

type SampleVisit = (dev: DeviceRef, f: MetricFormat, rows: SampleRow[], prevUs: number | null) => Promise<void>

/** Every device's samples of each code, metric by metric, device by device, in time order. */
async function walkSamples(w: Walk, codes: readonly number[], visit: SampleVisit): Promise<void> {
  for (const code of codes) {
    const f = formatFor(code)
    w.rows[f.key] ??= 0
    for (const dev of w.devices) {
      // A steps interval starts at the previous sample, which may lie before the range.
      let prev =
        f.interval && w.range.from !== undefined ? await previousSampleUs(w.db, dev.key, code, w.range.from) : null
      for await (const page of samplePages(w.db, dev.key, code, w.range, w.pageRows)) {
        await visit(dev, f, page, prev)
        w.rows[f.key] = (w.rows[f.key] as number) + page.length
        prev = (page[page.length - 1] as SampleRow).us
      }
    }
  }
}

async function walkPositions(
  w: Walk,
  visit: (dev: DeviceRef, rows: PositionRow[], first: boolean) => Promise<void>,
  deviceDone?: (dev: DeviceRef, any: boolean) => Promise<void>,
): Promise<void> {
  w.rows.positions ??= 0
  for (const dev of w.devices) {
    let first = true
    for await (const page of positionPages(w.db, dev.key, w.range, w.pageRows)) {
      await visit(dev, page, first)
      first = false
      w.rows.positions = (w.rows.positions as number) + page.length
    }
    await deviceDone?.(dev, !first)
  }
}

/** The metric codes the user's devices have rows of (all of them: none is left out of an export). */
async function storedCodes(w: Walk): Promise<number[]> {
  const codes = new Set<number>()
  for (const dev of w.devices) for (const c of await metricsOf(w.db, dev.key)) codes.add(c)
  return [...codes].sort((a, b) => a - b)
}

function linesFor(w: Walk): (dev: DeviceRef) => OmhLines {
  const byDevice = new Map<number, OmhLines>()
  return (dev) => {
    let l = byDevice.get(dev.key)
    if (!l) {
      l = new OmhLines(dev.id, w.userId)
      byDevice.set(dev.key, l)
    }
    return l
  }
}

const ms = (us: number) => us / 1000

function ndjsonSamples(lines: (d: DeviceRef) => OmhLines, write: (s: string) => Promise<void>): SampleVisit {
  return (dev, f, rows, prevUs) => {
    const l = lines(dev)
    let prev = prevUs
    let out = ''
    for (const r of rows) {
      out += l.scalar(f, ms(r.us), r.value, prev === null ? null : ms(prev))
      prev = r.us
    }
    return write(out)
  }
}

function ndjsonPositions(lines: (d: DeviceRef) => OmhLines, rows: PositionRow[], dev: DeviceRef): string {
  const l = lines(dev)
  let out = ''
  for (const r of rows) out += l.position(ms(r.us), r.lat, r.lon, r.alt, r.acc)
  return out
}

function gpxPoints(rows: PositionRow[]): string {
  let out = ''
  for (const r of rows) out += gpxPoint(ms(r.us), r.lat, r.lon, r.alt, r.acc)
  return out
}

async function exportNdjson(w: Walk, sink: TextSink): Promise<void> {
  const lines = linesFor(w)
  const write = (s: string) => sink.write(s)
  await walkSamples(w, await storedCodes(w), ndjsonSamples(lines, write))
  await walkPositions(w, (dev, rows) => sink.write(ndjsonPositions(lines, rows, dev)))
}

async function exportCsv(w: Walk, sink: TextSink): Promise<void> {
  await sink.write(csvHeader(LONG_COLUMNS))
  await walkSamples(w, await storedCodes(w), (dev, f, rows) =>
    sink.write(csvRows(rows.map((r) => longSample(dev.id, f.key, ms(r.us), r.value)))),
  )
  await walkPositions(w, (dev, rows) =>
    sink.write(csvRows(rows.map((r) => longPosition(dev.id, ms(r.us), r.lat, r.lon, r.alt, r.acc)))),
  )
}

async function exportGpx(w: Walk, sink: TextSink, generatedAt: number): Promise<void> {
  await sink.write(gpxOpen(w.userId, generatedAt))
  await walkPositions(
    w,
    (dev, rows, first) => sink.write((first ? gpxTrackOpen(dev.id) : '') + gpxPoints(rows)),
    (_dev, any) => (any ? sink.write(GPX_TRACK_CLOSE) : Promise.resolve()),
  )
  await sink.write(GPX_CLOSE)
}

async function exportBundle(w: Walk, sink: TextSink, generatedAt: number, tmpRoot: string): Promise<PartInfo[]> {
  const dir = fs.mkdtempSync(path.join(tmpRoot, 'pulsegate-export-'))
  const staged: { info: PartInfo; path: string }[] = []
  const open = (name: string) => new PartFile(name, path.join(dir, name.replace(/\//g, '_')))
  const close = async (...parts: PartFile[]) => {
    for (const p of parts) staged.push({ info: await p.close(), path: p.path })
  }
  try {
    const lines = linesFor(w)
    // Every known metric gets its files (empty when there is nothing), plus any stored code this build does not know.
    const codes = [...new Set([...METRIC_FORMATS.map((f) => f.code), ...(await storedCodes(w))])].sort((a, b) => a - b)
    for (const code of codes) {
      const f = formatFor(code)
      const nd = open(`ndjson/${f.key}.ndjson`)
      const csv = open(`csv/${f.key}.csv`)
      await csv.write(csvHeader(metricColumns(f.key)))
      const ndVisit = ndjsonSamples(lines, (s) => nd.write(s))
      await walkSamples(w, [code], async (dev, mf, rows, prev) => {
        await ndVisit(dev, mf, rows, prev)
        await csv.write(csvRows(rows.map((r): Cell[] => [dev.id, isoTime(ms(r.us)), r.value])))
        nd.rows += rows.length
        csv.rows += rows.length
      })
      await close(nd, csv)
    }
    const nd = open('ndjson/positions.ndjson')
    const csv = open('csv/positions.csv')
    const gpx = open('positions.gpx')
    await csv.write(csvHeader(POSITION_COLUMNS))
    await gpx.write(gpxOpen(w.userId, generatedAt))
    await walkPositions(
      w,
      async (dev, rows, first) => {
        await nd.write(ndjsonPositions(lines, rows, dev))
        await csv.write(csvRows(rows.map((r): Cell[] => [dev.id, isoTime(ms(r.us)), r.lat, r.lon, r.alt, r.acc])))
        await gpx.write((first ? gpxTrackOpen(dev.id) : '') + gpxPoints(rows))
        for (const p of [nd, csv, gpx]) p.rows += rows.length
      },
      (_dev, any) => (any ? gpx.write(GPX_TRACK_CLOSE) : Promise.resolve()),
    )
    await gpx.write(GPX_CLOSE)
    await close(nd, csv, gpx)

    for (const side of SIDE_FILES) {
      const part = open(side.file)
      const table = await findSideTable(w.db, side.tables, side.users)
      if (table) {
        for await (const page of sideTableRows(w.db, table, w.userId, w.pageRows)) {
          await part.write(page.map((r) => `${JSON.stringify(r)}\n`).join(''))
          part.rows += page.length
        }
      }
      await close(part)
    }

    const manifest: Manifest = {
      format: BUNDLE_FORMAT,
      format_version: BUNDLE_FORMAT_VERSION,
      generated_at: new Date(generatedAt).toISOString(),
      user_id: w.userId,
      time_range: {
        from: w.range.from !== undefined ? new Date(w.range.from).toISOString() : null,
        to: w.range.to !== undefined ? new Date(w.range.to).toISOString() : null,
      },
      devices: w.devices.map((d) => d.id),
      schemas: { ndjson: [...codes.map((c) => formatFor(c).schema), GEOPOSITION], gpx: '1.1', csv: 'RFC 4180' },
      files: staged.map((s) => ({ ...s.info, media_type: mediaType(s.info.name) })),
    }
    await writeBundle(sink, manifest, staged)
    return staged.map((s) => s.info)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Writes the export to `out` (which stays open: the caller ends it, a file or an HTTP response alike) and records an
 * audit entry whether it succeeded or not. Throws PortabilityError before writing anything when the user is unknown.
 */
export async function exportUser(db: Queryable, out: Writable, opts: ExportOptions): Promise<ExportReport> {
  if (!(EXPORT_FORMATS as readonly string[]).includes(opts.format)) {
    throw new PortabilityError(`unknown export format ${JSON.stringify(opts.format)} (${EXPORT_FORMATS.join(', ')})`)
  }
  const devices = await userDevices(db, opts.userId)
  if (devices === null) throw new PortabilityError(`unknown user ${opts.userId}`, 'not_found')
  const range = opts.range ?? {}
  const w: Walk = { db, userId: opts.userId, devices, range, pageRows: opts.pageRows ?? DEFAULT_PAGE_ROWS, rows: {} }
  const sink = new TextSink(out)
  const generatedAt = (opts.now ?? Date.now)()
  let files: PartInfo[] | undefined
  let failure: Error | null = null
  try {
    if (opts.format === 'ndjson') await exportNdjson(w, sink)
    else if (opts.format === 'csv') await exportCsv(w, sink)
    else if (opts.format === 'gpx') await exportGpx(w, sink, generatedAt)
    else files = await exportBundle(w, sink, generatedAt, opts.tmpDir ?? os.tmpdir())
  } catch (err) {
    failure = err as Error
  }
  const total = Object.values(w.rows).reduce((a, b) => a + b, 0)
  await opts.audit?.record({
    actor: opts.actor ?? { role: 'cli', id: null },
    action: 'export',
    subject: opts.userId,
    purpose: 'export',
    details: {
      format: opts.format,
      rows: total,
      bytes: sink.bytes,
      from: range.from ?? null,
      to: range.to ?? null,
      outcome: failure ? 'failed' : 'complete',
    },
  })
  if (failure) throw failure
  return {
    format: opts.format,
    userId: opts.userId,
    rows: w.rows,
    total,
    bytes: sink.bytes,
    ...(files ? { files } : {}),
  }
}

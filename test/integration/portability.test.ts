// Export and import (issue #11 items 4–5) on both stores: every stored row comes out once in each format, the files
// are what they claim (Open mHealth, GPX 1.1, a bundle whose manifest hashes match), and export → erase → import
// restores exactly the same rows, through the same validation and dedupe as live readings.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Readable, Writable } from 'node:stream'
import { parse as parseCsv } from 'csv-parse/sync'
import { XMLParser } from 'fast-xml-parser'
import tar from 'tar-stream'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { main } from '../../src/cli/main.js'
import { createLogger } from '../../src/log.js'
import type { AuditEntry, AuditSink } from '../../src/ops/audit-types.js'
import { PortabilityError } from '../../src/ops/errors.js'
import { type ExportFormat, exportUser } from '../../src/ops/export.js'
import { importUser } from '../../src/ops/import.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import {
  connectDevice,
  createTestDatabase,
  provisionDevice,
  type StoreKind,
  startTestBroker,
  type TestBroker,
  tempDir,
  token,
} from '../helpers/harness.js'
import {
  buildFixture,
  collector,
  dbCounts,
  erase,
  type Fixture,
  OTHER_DEV,
  PHONE,
  snapshot,
  T0,
  TRK,
  USER,
} from '../helpers/portability-fixture.js'
import { runCli as run } from '../helpers/cli.js'

const log = createLogger('silent')
const KEYS: Record<number, string> = {
  1: 'hr',
  2: 'spo2',
  3: 'steps',
  4: 'cadence',
  5: 'skin_temp',
  6: 'resp',
  7: 'distance',
}
const SCHEMAS: Record<string, number> = {
  'heart-rate': 1,
  'oxygen-saturation': 2,
  'step-count': 3,
  cadence: 4,
  'body-temperature': 5,
  'respiratory-rate': 6,
  distance: 7,
}

/** Reads a tar into name → bytes, keeping the order of the entries. */
async function untar(buf: Buffer): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>()
  const extract = tar.extract()
  Readable.from([buf]).pipe(extract)
  for await (const entry of extract) {
    const chunks: Buffer[] = []
    for await (const c of entry as AsyncIterable<Buffer>) chunks.push(c)
    out.set(entry.header.name, Buffer.concat(chunks))
  }
  return out
}

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex')
const ndjson = <T = Record<string, unknown>>(text: string): T[] =>
  text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T)

/** An exported Open mHealth data point, as far as these tests read it. */
interface DataPoint {
  header: {
    id: string
    creation_date_time: string
    schema_id: { namespace: string; name: string; version: string }
    acquisition_provenance: { source_name: string; modality: string }
    user_id: string
  }
  body: Record<string, Record<string, unknown> | undefined>
}
/** fast-xml-parser's ordered form: each node maps its tag to its children (attributes under ':@'). */
type XNode = Record<string, XNode[]>

/** GPX 1.1's element order (gpx.xsd): gpxType, trkType and wptType sequences. */
const GPX_ORDER = ['metadata', 'wpt', 'rte', 'trk', 'extensions']
const TRK_ORDER = ['name', 'cmt', 'desc', 'src', 'link', 'number', 'type', 'extensions', 'trkseg']
const WPT_ORDER = ['ele', 'time', 'magvar', 'geoidheight', 'name', 'cmt', 'desc', 'src', 'link', 'sym', 'type'].concat([
  'fix',
  'sat',
  'hdop',
  'vdop',
  'pdop',
  'ageofdgpsdata',
  'dgpsid',
  'extensions',
])
function inSchemaOrder(children: string[], order: string[]): boolean {
  const idx = children.map((c) => order.indexOf(c))
  return idx.every((i, k) => i >= 0 && (k === 0 || i >= (idx[k - 1] as number)))
}

const stores: StoreKind[] = ['postgres', 'embedded']

describe.each(stores)('export and import on %s', (store) => {
  let db: Db
  let fx: Fixture
  let close: () => Promise<void>
  let dbUrl: string | null = null
  const dataDir = tempDir()
  const dir = tempDir('pulsegate-portability-')

  beforeAll(async () => {
    if (store === 'postgres') {
      const t = await createTestDatabase()
      dbUrl = t.url
      db = openPostgres(t.url, 4, log)
      close = async () => {
        await db.close()
        await t.drop()
      }
    } else {
      db = await openEmbedded(dataDir, log)
      close = () => db.close()
    }
    await migrate(db, log)
    fx = await buildFixture(db)
  }, 120_000)
  afterAll(async () => {
    await close?.()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  const exportTo = async (format: ExportFormat, opts: { pageRows?: number; from?: number; to?: number } = {}) => {
    const c = collector()
    const report = await exportUser(db, c.out, {
      userId: USER,
      format,
      ...(opts.pageRows ? { pageRows: opts.pageRows } : {}),
      range: { ...(opts.from ? { from: opts.from } : {}), ...(opts.to ? { to: opts.to } : {}) },
    })
    return { report, buffer: c.buffer(), text: c.text() }
  }

  it('NDJSON: one Open mHealth data point per stored row, counts equal the database per device and metric', async () => {
    // Small pages so that paging itself is exercised (3,000 hr rows → 7 pages of 500).
    const { report, text } = await exportTo('ndjson', { pageRows: 500 })
    const points = ndjson<DataPoint>(text)
    const counts = await dbCounts(db, USER)
    const seen = new Map<string, number>()
    const positions = new Map<string, number>()
    for (const p of points) {
      const src = p.header.acquisition_provenance.source_name
      if (p.header.schema_id.name === 'geoposition') positions.set(src, (positions.get(src) ?? 0) + 1)
      else {
        const key = `${src}/${SCHEMAS[p.header.schema_id.name]}`
        seen.set(key, (seen.get(key) ?? 0) + 1)
      }
    }
    expect(seen).toEqual(counts.samples)
    expect(positions).toEqual(counts.positions)
    expect(text).not.toContain(OTHER_DEV)
    expect(report.total).toBe(points.length)
    expect(report.rows.hr).toBe((counts.samples.get(`${TRK}/1`) ?? 0) + (counts.samples.get(`${PHONE}/1`) ?? 0))

    const hr = points.find((p) => p.header.schema_id.name === 'heart-rate') as DataPoint
    expect(hr.header).toMatchObject({
      schema_id: { namespace: 'omh', name: 'heart-rate', version: '2.0' },
      acquisition_provenance: { source_name: TRK, modality: 'sensed' },
      user_id: USER,
    })
    expect(hr.header.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(hr.header.creation_date_time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    expect(hr.body.heart_rate?.unit).toBe('beats/min')
    expect(hr.body.effective_time_frame?.date_time).toBe(new Date(T0).toISOString())
    expect(new Set(points.map((p) => p.header.id)).size).toBe(points.length)
    // Steps cover the interval since the device's previous steps sample (step-count-3.0 wants a time_interval).
    const steps = points.filter((p) => p.header.schema_id.name === 'step-count')
    expect(steps[0]?.body.effective_time_frame?.time_interval).toEqual({
      start_date_time: new Date(T0).toISOString(),
      end_date_time: new Date(T0).toISOString(),
    })
    expect(steps[1]?.body.effective_time_frame?.time_interval).toEqual({
      start_date_time: new Date(T0).toISOString(),
      end_date_time: new Date(T0 + 3000).toISOString(),
    })
    const geo = points.find((p) => p.header.schema_id.name === 'geoposition') as DataPoint
    expect(geo.header.schema_id.version).toBe('2.0')
    expect(geo.body.latitude?.unit).toBe('degree-decimal')
    // The same data exports to the same bytes: ids are derived from (device, metric, time).
    expect((await exportTo('ndjson')).text).toBe(text)
  })

  it('writes wait for drain: a slow reader never has more than a page waiting', async () => {
    let maxBuffered = 0
    let bytes = 0
    const slow = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, cb) {
        bytes += chunk.length
        setTimeout(cb, 15)
      },
    })
    const sample = setInterval(() => {
      maxBuffered = Math.max(maxBuffered, slow.writableLength)
    }, 0)
    const report = await exportUser(db, slow, { userId: USER, format: 'ndjson', pageRows: 100 })
    clearInterval(sample)
    // A page of 100 data points is ~45 kB; the whole export is ~3.8 MB.
    expect(report.bytes).toBe(bytes)
    expect(bytes).toBeGreaterThan(3_000_000)
    expect(maxBuffered).toBeGreaterThan(0)
    expect(maxBuffered).toBeLessThan(100_000)
  })

  it('records an audit entry for every export and import, also for one whose reader went away', async () => {
    const entries: AuditEntry[] = []
    const audit: AuditSink = {
      async record(e) {
        entries.push(e)
      },
    }
    const c = collector()
    const report = await exportUser(db, c.out, { userId: USER, format: 'gpx', audit })
    // A reader that fails after the first chunk (a client that hung up).
    const gone = new Writable({
      write(_chunk, _enc, cb) {
        cb(new Error('client went away'))
      },
    })
    gone.on('error', () => {})
    await expect(exportUser(db, gone, { userId: USER, format: 'ndjson', audit })).rejects.toThrow()
    const imported = await importUser(db, Readable.from([c.buffer()]), { userId: USER, deviceId: TRK, audit })
    expect(entries.map((e) => [e.action, e.subject, e.purpose, e.details?.outcome])).toEqual([
      ['export', USER, 'export', 'complete'],
      ['export', USER, 'export', 'failed'],
      ['import', USER, 'import', 'complete'],
    ])
    expect(entries[0]?.details).toMatchObject({ format: 'gpx', rows: report.total })
    expect(entries[2]?.details).toMatchObject({ format: 'gpx', imported: 0, duplicates: imported.duplicates })
    expect(entries.every((e) => e.actor.role === 'cli')).toBe(true)
  })

  it('--from/--to select readings in [from, to); a steps interval still starts at the sample before the range', async () => {
    const from = T0 + 600_000
    const to = T0 + 1_200_000
    const { report, text } = await exportTo('ndjson', { from, to })
    const r = await db.query<{ metric: number; n: number }>(
      `SELECT metric, count(*)::int AS n FROM samples WHERE device_key = ANY($1::int4[])
       AND time >= to_timestamp($2 / 1000.0) AND time < to_timestamp($3 / 1000.0) GROUP BY 1`,
      [fx.userKeys, from, to],
    )
    for (const row of r.rows) expect(report.rows[KEYS[row.metric] as string]).toBe(row.n)
    const steps = ndjson<DataPoint>(text).filter((p) => p.header.schema_id.name === 'step-count')
    expect(steps[0]?.body.effective_time_frame?.time_interval).toEqual({
      start_date_time: new Date(from - 3000).toISOString(),
      end_date_time: new Date(from).toISOString(),
    })
  })

  it('CSV: one row per stored row, counts per metric equal the database', async () => {
    const { text } = await exportTo('csv', { pageRows: 700 })
    const rows = parseCsv(text, { columns: true }) as Record<string, string>[]
    const counts = await dbCounts(db, USER)
    const seen = new Map<string, number>()
    const positions = new Map<string, number>()
    for (const r of rows) {
      if (r.metric === 'position') positions.set(r.device as string, (positions.get(r.device as string) ?? 0) + 1)
      else {
        const code = Object.entries(KEYS).find(([, k]) => k === r.metric)?.[0]
        seen.set(`${r.device}/${code}`, (seen.get(`${r.device}/${code}`) ?? 0) + 1)
      }
    }
    expect(seen).toEqual(counts.samples)
    expect(positions).toEqual(counts.positions)
    expect(Object.keys(rows[0] ?? {})).toEqual(['device', 'metric', 'time', 'value', 'lat', 'lon', 'alt', 'acc'])
  })

  it('GPX: valid GPX 1.1, one track per device, every position a trkpt with lat/lon and time, in schema order', async () => {
    const { text } = await exportTo('gpx', { pageRows: 300 })
    const doc = new XMLParser({
      ignoreAttributes: false,
      attributeNamePrefix: '@_',
      isArray: (n) => n === 'trk' || n === 'trkpt',
    }).parse(text) as {
      gpx: Record<string, unknown> & { trk: { name: string; trkseg: { trkpt: Record<string, string>[] } }[] }
    }
    expect(doc.gpx['@_version']).toBe('1.1')
    expect(doc.gpx['@_xmlns']).toBe('http://www.topografix.com/GPX/1/1')
    const counts = await dbCounts(db, USER)
    const tracks = doc.gpx.trk
    expect(new Map(tracks.map((t) => [t.name, t.trkseg.trkpt.length]))).toEqual(counts.positions)
    for (const t of tracks) {
      let last = -Infinity
      for (const pt of t.trkseg.trkpt) {
        expect(Number.isFinite(Number(pt['@_lat'])) && Number.isFinite(Number(pt['@_lon']))).toBe(true)
        const time = Date.parse(pt.time as string)
        expect(time).toBeGreaterThan(last)
        last = time
      }
    }
    // Element order, checked on the ordered form of the same document.
    const ordered = new XMLParser({ preserveOrder: true, ignoreAttributes: false }).parse(text) as XNode[]
    const names = (nodes: XNode[]) => nodes.map((n) => Object.keys(n).find((k) => k !== ':@') as string)
    const gpx = ordered.find((n) => 'gpx' in n)?.gpx as XNode[]
    expect(inSchemaOrder(names(gpx), GPX_ORDER)).toBe(true)
    let points = 0
    for (const trk of gpx.filter((n) => 'trk' in n)) {
      const children = trk.trk as XNode[]
      expect(inSchemaOrder(names(children), TRK_ORDER)).toBe(true)
      const seg = children.find((n) => 'trkseg' in n)?.trkseg as XNode[]
      for (const pt of seg) {
        expect(inSchemaOrder(names(pt.trkpt as XNode[]), WPT_ORDER)).toBe(true)
        expect(names(pt.trkpt as XNode[])).toContain('time')
        points++
      }
    }
    expect(points).toBe([...counts.positions.values()].reduce((a, b) => a + b, 0))
  })

  it("bundle: the manifest's rows, sizes and SHA-256 match every file; consents, alerts, recommendations and audit included", async () => {
    const { buffer, report } = await exportTo('bundle', { pageRows: 1000 })
    const files = await untar(buffer)
    expect([...files.keys()][0]).toBe('manifest.json')
    const manifest = JSON.parse((files.get('manifest.json') as Buffer).toString('utf8'))
    expect(manifest).toMatchObject({
      format: 'pulsegate-export',
      format_version: 1,
      user_id: USER,
      devices: [TRK, PHONE],
    })
    expect(manifest.files.map((f: { name: string }) => f.name).sort()).toEqual([...files.keys()].slice(1).sort())
    for (const f of manifest.files as { name: string; rows: number; bytes: number; sha256: string }[]) {
      const body = files.get(f.name) as Buffer
      expect(body.length, f.name).toBe(f.bytes)
      expect(sha256(body), f.name).toBe(f.sha256)
      const lines = body.toString('utf8').split('\n').filter(Boolean).length
      if (f.name.endsWith('.ndjson')) expect(lines, f.name).toBe(f.rows)
      if (f.name.endsWith('.csv')) expect(lines - 1, f.name).toBe(f.rows)
    }
    expect(report.files).toEqual(manifest.files.map(({ media_type: _, ...f }: Record<string, unknown>) => f))
    const counts = await dbCounts(db, USER)
    const rows = (name: string) =>
      (manifest.files.find((f: { name: string }) => f.name === name) as { rows: number }).rows
    for (const [code, key] of Object.entries(KEYS)) {
      const n = (counts.samples.get(`${TRK}/${code}`) ?? 0) + (counts.samples.get(`${PHONE}/${code}`) ?? 0)
      expect(rows(`ndjson/${key}.ndjson`), key).toBe(n)
      expect(rows(`csv/${key}.csv`), key).toBe(n)
    }
    const positions = [...counts.positions.values()].reduce((a, b) => a + b, 0)
    for (const f of ['ndjson/positions.ndjson', 'csv/positions.csv', 'positions.gpx']) expect(rows(f)).toBe(positions)
    const consents = ndjson((files.get('consents.ndjson') as Buffer).toString('utf8'))
    expect(consents.map((c) => [c.user_id, c.purpose, c.granted])).toEqual([
      [USER, 'leaderboard', true],
      [USER, 'research', false],
    ])
    const alerts = ndjson((files.get('alerts.ndjson') as Buffer).toString('utf8'))
    expect(alerts.map((a) => a.device_id).sort()).toEqual([PHONE, TRK])
    // These two tables arrive from other branches: the file is there either way, with the user's rows if any.
    for (const [file, table] of [
      ['recommendations.ndjson', 'recommendations'],
      ['audit.ndjson', 'audit_log'],
    ] as const) {
      expect(files.has(file)).toBe(true)
      const exists = (await db.query<{ ok: boolean }>('SELECT to_regclass($1) IS NOT NULL AS ok', [table])).rows[0]?.ok
      if (!exists) expect(rows(file)).toBe(0)
    }
    expect(buffer.toString('latin1')).not.toContain(OTHER_DEV)
  })

  for (const format of ['ndjson', 'csv', 'bundle'] as const) {
    it(`round trip through ${format}: export → erase → import restores identical rows; a second import adds none`, async () => {
      const before = await snapshot(db, fx.userKeys)
      const file = path.join(dir, `round-trip.${format}`)
      const c = collector()
      await exportUser(db, c.out, { userId: USER, format })
      fs.writeFileSync(file, c.buffer())
      await erase(db, fx.userKeys)
      expect((await snapshot(db, fx.userKeys)).samples).toHaveLength(0)

      const report = await importUser(db, fs.createReadStream(file), { userId: USER, deviceId: TRK, batchRows: 2000 })
      expect(report.format).toBe(format)
      expect(report.refused).toEqual({})
      expect(report.imported).toBe(before.samples.length + before.positions.length)
      expect(report.duplicates).toBe(0)
      expect(await snapshot(db, fx.userKeys)).toEqual(before)
      if (store === 'embedded') {
        // TimescaleDB: the per-minute rollup now covers the imported history (10 days back, outside its policy).
        const r = await db.query<{ n: number }>(
          'SELECT coalesce(sum(n), 0)::int AS n FROM samples_1m WHERE device_key = ANY($1::int4[]) AND metric = 1',
          [fx.userKeys],
        )
        expect(r.rows[0]?.n).toBe(before.samples.filter((x) => x.metric === 1).length)
      }

      const again = await importUser(db, fs.createReadStream(file), { userId: USER, deviceId: TRK })
      expect(again.imported).toBe(0)
      expect(again.duplicates).toBe(before.samples.length + before.positions.length)
      expect(await snapshot(db, fx.userKeys)).toEqual(before)
    })
  }

  it('round trip through GPX restores the positions exactly', async () => {
    const before = await snapshot(db, fx.userKeys)
    const c = collector()
    await exportUser(db, c.out, { userId: USER, format: 'gpx' })
    await db.query('DELETE FROM positions WHERE device_key = ANY($1::int4[])', [fx.userKeys])
    const report = await importUser(db, Readable.from([c.buffer()]), { userId: USER, deviceId: PHONE })
    expect(report).toMatchObject({
      format: 'gpx',
      refused: {},
      rows: { samples: 0, positions: before.positions.length },
    })
    expect(await snapshot(db, fx.userKeys)).toEqual(before)
  })

  it('import judges rows like live readings (bounds, future, in-file duplicates) but without the late window', async () => {
    const old = Date.now() - 40 * 86_400_000 // far older than the 7-day late-arrival window
    const point = (schema: string, body: Record<string, unknown>, source = TRK) =>
      JSON.stringify({
        header: {
          schema_id: { namespace: 'omh', name: schema, version: '2.0' },
          acquisition_provenance: { source_name: source },
        },
        body,
      })
    const hr = (t: number, value: unknown, source?: string) =>
      point(
        'heart-rate',
        { heart_rate: { value, unit: 'beats/min' }, effective_time_frame: { date_time: new Date(t).toISOString() } },
        source,
      )
    const file = [
      hr(old, 71.5),
      hr(old, 71.5), // the same reading twice: stored once
      hr(old + 1000, 400), // out of bounds
      hr(Date.now() + 3_600_000, 80), // in the future
      hr(old + 2000, 'fast'), // not a number
      hr(old + 3000, 90, PHONE), // names the user's other device: goes there
      hr(old + 4000, 91, OTHER_DEV), // names someone else's device: attributed to --device, never to theirs
      point('blood-glucose', { blood_glucose: { value: 5 } }),
      '{"header": {',
      point('body-temperature', {
        body_temperature: { value: 93.2, unit: 'F' },
        effective_time_frame: { date_time: new Date(old).toISOString() },
      }),
    ].join('\n')
    const bobBefore = await db.query('SELECT count(*)::int AS n FROM samples WHERE device_key = $1', [
      fx.keys.get(OTHER_DEV),
    ])
    const report = await importUser(db, Readable.from([Buffer.from(file)]), { userId: USER, deviceId: TRK })
    expect(report.refused).toEqual({
      out_of_range: 1,
      future_timestamp: 1,
      wrong_type: 1,
      unknown_schema: 1,
      malformed_json: 1,
    })
    expect(report.imported).toBe(4)
    expect(report.duplicates).toBe(1)
    const rows = await db.query<{ device_id: string; metric: number; value: number }>(
      `SELECT d.device_id, s.metric, s.value FROM samples s JOIN devices d USING (device_key)
       WHERE s.time >= to_timestamp($1 / 1000.0) AND s.time < to_timestamp($2 / 1000.0) ORDER BY s.time, d.device_id, s.metric`,
      [old, old + 10_000],
    )
    expect(rows.rows.map((r) => [r.device_id, r.metric, r.value])).toEqual([
      [TRK, 1, 71.5],
      [TRK, 5, ((93.2 - 32) * 5) / 9],
      [PHONE, 1, 90],
      [TRK, 1, 91],
    ])
    const bobAfter = await db.query('SELECT count(*)::int AS n FROM samples WHERE device_key = $1', [
      fx.keys.get(OTHER_DEV),
    ])
    expect(bobAfter.rows).toEqual(bobBefore.rows)
  })

  it('CSV and GPX from another app: wide columns, Garmin heart rate, bad cells refused by reason', async () => {
    const t = Date.now() - 20 * 86_400_000
    const csv = `time,hr,steps,notes\n${new Date(t).toISOString()},88,12,warm-up\n${t + 1000},89.5,1.5,\nnot-a-time,90,,\n`
    const r1 = await importUser(db, Readable.from([Buffer.from(csv)]), { userId: USER, deviceId: PHONE })
    expect(r1).toMatchObject({ format: 'csv', imported: 3, refused: { wrong_type: 1, bad_timestamp: 1 } })
    const gpx = `<?xml version="1.0"?><gpx version="1.1" xmlns="http://www.topografix.com/GPX/1/1"
      xmlns:gpxtpx="http://www.garmin.com/xmlschemas/TrackPointExtension/v1"><trk><name>Morning run</name><trkseg>
      <trkpt lat="48.1" lon="11.5"><ele>520</ele><time>${new Date(t + 5000).toISOString()}</time>
        <extensions><gpxtpx:TrackPointExtension><gpxtpx:hr>131</gpxtpx:hr></gpxtpx:TrackPointExtension></extensions></trkpt>
      <trkpt lat="48.2" lon="11.5"><time>${new Date(t + 6000).toISOString()}</time></trkpt>
      <trkpt lat="91" lon="11.5"><time>${new Date(t + 7000).toISOString()}</time></trkpt>
    </trkseg></trk></gpx>`
    const r2 = await importUser(db, Readable.from([Buffer.from(gpx)]), { userId: USER, deviceId: PHONE })
    // 48.1 → 48.2 in one second is ~11 km: refused for speed; lat 91 is out of range.
    expect(r2).toMatchObject({
      format: 'gpx',
      rows: { samples: 1, positions: 1 },
      refused: { implausible_speed: 1, out_of_range: 1 },
    })
    await expect(
      importUser(db, Readable.from([Buffer.from('<gpx><trk>')]), { userId: USER, deviceId: PHONE }),
    ).rejects.toThrow(/not a GPX document/)
  })

  it("refuses a device that is not the user's, and an unknown user", async () => {
    const input = () => Readable.from([Buffer.from('')])
    await expect(importUser(db, input(), { userId: USER, deviceId: OTHER_DEV })).rejects.toThrow(
      /not registered to user port-alice/,
    )
    await expect(importUser(db, input(), { userId: 'nobody', deviceId: TRK })).rejects.toBeInstanceOf(PortabilityError)
    await expect(exportUser(db, collector().out, { userId: 'nobody', format: 'ndjson' })).rejects.toThrow(
      /unknown user/,
    )
  })

  it("CLI offline: users export -o file and users import, with exit code 2 for the caller's mistakes", async () => {
    const before = await snapshot(db, fx.userKeys)
    const env = { ...process.env }
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    if (dbUrl) process.env.PULSEGATE_DATABASE_URL = dbUrl
    else {
      delete process.env.PULSEGATE_DATABASE_URL
      process.env.PULSEGATE_DATA_DIR = dataDir
      await db.close() // the CLI opens the embedded store itself
    }
    try {
      const file = path.join(dir, 'cli.tar')
      const ex = await run('users', 'export', USER, '--format', 'bundle', '-o', file)
      expect(ex.code, ex.err).toBe(0)
      expect(ex.out).toMatch(new RegExp(`exported ${before.samples.length + before.positions.length} rows`))
      expect(fs.readdirSync(dir).filter((f) => f.includes('.partial-'))).toEqual([])
      expect((await run('users', 'export', 'nobody', '--format', 'ndjson')).err).toMatch(/unknown user nobody/)
      const bad = await run('users', 'import', USER, '--device', OTHER_DEV, file)
      expect(bad.code).toBe(2)
      expect(bad.err).toMatch(/not registered to user/)
      expect((await run('users', 'export', USER, '--format', 'xml')).code).toBe(2)
      if (!dbUrl) db = await openEmbedded(dataDir, log)
      await erase(db, fx.userKeys)
      if (!dbUrl) await db.close()
      const im = await run('users', 'import', USER, '--device', TRK, file)
      expect(im.code, im.err).toBe(0)
      expect(im.out).toMatch(/refused: none/)
    } finally {
      process.env = env
      if (!dbUrl) db = await openEmbedded(dataDir, log)
    }
    expect(await snapshot(db, fx.userKeys)).toEqual(before)
  }, 120_000)
})

describe('export and import through a running broker that owns the embedded store', () => {
  let tb: TestBroker
  let keys: number[]
  const dir = tempDir('pulsegate-portability-live-')
  const env = { ...process.env }

  beforeAll(async () => {
    tb = await startTestBroker('embedded')
    const dev = await provisionDevice(tb, 'live-trk', 'live-user')
    keys = [(await tb.pg.registry.device('live-trk'))?.deviceKey as number]
    // Readings through the live pipeline (mTLS, QoS 1: committed at the PUBACK), distance derived from the fixes.
    const client = await connectDevice(tb, dev)
    const t0 = Date.now() - 600_000
    const samples = Array.from({ length: 60 }, (_, i) => ({
      t: t0 + i * 1000,
      hr: 120 + (i % 7) + 0.25,
      lat: 52.5 + i * 0.00002,
      lon: 13.4,
      ...(i % 10 === 0 ? { steps: 3, spo2: 97 } : {}),
    }))
    await client.publishAsync('devices/live-trk/readings', JSON.stringify({ seq: 1, samples }), { qos: 1 })
    await client.endAsync()
    delete process.env.PULSEGATE_DATABASE_URL
    process.env.PULSEGATE_DATA_DIR = tb.dataDir
    process.env.PULSEGATE_JWT_SECRET = 'test-secret-0123456789abcdef'
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
  }, 120_000)
  afterAll(async () => {
    process.env = env
    await tb?.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('CLI export streams from the broker (NDJSON and a verified bundle); erase; CLI import uploads and restores', async () => {
    const before = await snapshot(tb.pg.db, keys)
    expect(before.samples.filter((s) => s.metric === 7).length).toBeGreaterThan(0) // derived distance
    const nd = path.join(dir, 'live.ndjson')
    const ex = await run('users', 'export', 'live-user', '--format', 'ndjson', '-o', nd)
    expect(ex.code, ex.err).toBe(0)
    expect(fs.readFileSync(nd, 'utf8').split('\n').filter(Boolean)).toHaveLength(
      before.samples.length + before.positions.length,
    )
    const bundle = path.join(dir, 'live.tar')
    expect((await run('users', 'export', 'live-user', '--format', 'bundle', '-o', bundle)).code).toBe(0)
    const files = await untar(fs.readFileSync(bundle))
    const manifest = JSON.parse((files.get('manifest.json') as Buffer).toString('utf8'))
    for (const f of manifest.files as { name: string; sha256: string }[]) {
      expect(sha256(files.get(f.name) as Buffer), f.name).toBe(f.sha256)
    }

    await erase(tb.pg.db, keys)
    const im = await run('users', 'import', 'live-user', '--device', 'live-trk', nd)
    expect(im.code, im.err).toBe(0)
    expect(im.out).toMatch(new RegExp(`imported ${before.samples.length + before.positions.length} rows`))
    expect(await snapshot(tb.pg.db, keys)).toEqual(before)
    await erase(tb.pg.db, keys)
    expect((await run('users', 'import', 'live-user', '--device', 'live-trk', bundle)).code).toBe(0)
    expect(await snapshot(tb.pg.db, keys)).toEqual(before)
  })

  it('users export and users import have --help', async () => {
    for (const cmd of [['users'], ['users', 'export'], ['users', 'import']]) {
      const writes: string[] = []
      const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
        writes.push(String(s))
        return true
      })
      const code = await main(['node', 'pulsegate', ...cmd, '--help'])
      spy.mockRestore()
      expect(code).toBe(0)
      expect(writes.join('')).toMatch(/Usage: pulsegate users/)
    }
  })

  it("the broker answers the caller's mistakes with 4xx (CLI exit 2) and needs an admin token", async () => {
    expect((await run('users', 'export', 'nobody', '--format', 'gpx')).err).toMatch(/unknown user nobody/)
    // A file of some megabytes: the broker refuses before reading it, and the answer must still reach the CLI.
    const big = path.join(dir, 'big.ndjson')
    const line = fs.readFileSync(path.join(dir, 'live.ndjson'), 'utf8').split('\n')[0] as string
    fs.writeFileSync(big, `${line}\n`.repeat(20_000))
    const bad = await run('users', 'import', 'nobody', '--device', 'live-trk', big)
    expect(bad.code).toBe(2)
    expect(bad.err).toMatch(/unknown user nobody/)
    const base = `http://127.0.0.1:${tb.pg.ports.http}`
    expect((await fetch(`${base}/admin/export?user=live-user&format=ndjson`)).status).toBe(401)
    const app = await token(tb, 'live-user', 'app')
    const res = await fetch(`${base}/admin/export?user=live-user&format=ndjson`, {
      headers: { authorization: `Bearer ${app}` },
    })
    expect(res.status).toBe(403)
    const admin = await token(tb, 'ops', 'admin')
    const wrong = await fetch(`${base}/admin/export?user=live-user&format=xml`, {
      headers: { authorization: `Bearer ${admin}` },
    })
    expect(wrong.status).toBe(400)
  })
})

// The export formats' building blocks, checked as properties: times and numbers come back exactly, an Open mHealth
// line parses back to the reading it was made from, CSV cells survive the trip, and NDJSON lines are found whatever
// the chunk boundaries (mid-line, mid-character).
import { Readable } from 'node:stream'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { csvHeader, csvItems, csvRows, LONG_COLUMNS, longPosition, longSample } from '../../src/ops/formats/csv.js'
import { lines } from '../../src/ops/formats/ndjson.js'
import {
  dataPointId,
  type ImportItem,
  isoTime,
  jsonNumber,
  METRIC_FORMATS,
  OmhLines,
  parseDataPoint,
} from '../../src/ops/formats/omh.js'

const double = fc.double({ noNaN: true, noDefaultInfinity: true })
/** epoch ms from 1900 to 2200 */
const time = fc.integer({ min: -2_208_988_800_000, max: 7_258_118_400_000 })

async function collect<T>(gen: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of gen) out.push(x)
  return out
}

describe('export format building blocks', () => {
  it('isoTime is Date#toISOString, for whole and fractional milliseconds', () => {
    fc.assert(fc.property(time, (t) => isoTime(t) === new Date(t).toISOString()))
    fc.assert(
      fc.property(fc.double({ min: 0, max: 7.2e12, noNaN: true }), (t) => isoTime(t) === new Date(t).toISOString()),
    )
    expect(isoTime(Date.UTC(2025, 10, 25, 9, 0, 1, 7))).toBe('2025-11-25T09:00:01.007Z')
  })

  it('jsonNumber gives back the same double (including -0); non-finite values become null', () => {
    fc.assert(fc.property(double, (v) => Object.is(JSON.parse(jsonNumber(v)), v)))
    expect([jsonNumber(Number.NaN), jsonNumber(Number.POSITIVE_INFINITY), jsonNumber(null)]).toEqual([
      'null',
      'null',
      'null',
    ])
  })

  it('data point ids are UUIDv5-shaped, the same for the same reading and different for another', () => {
    const id = dataPointId('trk-1', 'hr', 1764061200000)
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(dataPointId('trk-1', 'hr', 1764061200000)).toBe(id)
    expect(dataPointId('trk-1', 'hr', 1764061200001)).not.toBe(id)
    expect(dataPointId('trk-2', 'hr', 1764061200000)).not.toBe(id)
  })

  it('an Open mHealth line parses back to exactly the reading it was written from', () => {
    const lines = new OmhLines('trk-1', 'u-1')
    fc.assert(
      fc.property(fc.constantFrom(...METRIC_FORMATS), time, double, fc.option(time), (f, t, v, prev) => {
        const line = lines.scalar(f, t, v, prev)
        expect(line.endsWith('\n') && !line.slice(0, -1).includes('\n')).toBe(true)
        expect(parseDataPoint(line)).toEqual({ device: 'trk-1', sample: { t, [f.key]: v } })
      }),
    )
    fc.assert(
      fc.property(time, double, double, fc.option(double), fc.option(double), (t, lat, lon, alt, acc) => {
        const sample = { t, lat, lon, ...(alt !== null ? { alt } : {}), ...(acc !== null ? { acc } : {}) }
        expect(parseDataPoint(lines.position(t, lat, lon, alt, acc))).toEqual({ device: 'trk-1', sample })
      }),
    )
  })

  it('a data point with a unit it cannot convert is refused; a known one is converted', () => {
    const hr = (unit: string) =>
      JSON.stringify({
        header: { schema_id: { namespace: 'omh', name: 'heart-rate', version: '2.0' } },
        body: { heart_rate: { value: 1, unit }, effective_time_frame: { date_time: '2025-11-25T09:00:00Z' } },
      })
    expect(parseDataPoint(hr('beats/s'))).toEqual({ refused: 'wrong_unit' })
    expect(parseDataPoint(hr('beats/min'))).toMatchObject({ device: null, sample: { hr: 1 } })
    expect(parseDataPoint('[1,2]')).toEqual({ refused: 'not_a_data_point' })
  })

  it('CSV rows read back to the same readings, numbers exact', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(time, double, fc.boolean()), { minLength: 1, maxLength: 20 }),
        async (rows) => {
          const text =
            csvHeader(LONG_COLUMNS) +
            csvRows(
              rows.map(([t, v, pos]) => (pos ? longPosition('d', t, v, v, null, v) : longSample('d', 'hr', t, v))),
            )
          const items = await collect(csvItems(Readable.from([Buffer.from(text)])))
          const expected: ImportItem[] = rows.map(([t, v, pos]) => ({
            device: 'd',
            sample: pos ? { t, lat: v, lon: v, acc: v } : { t, hr: v },
          }))
          expect(items).toEqual(expected)
        },
      ),
    )
  })

  it('NDJSON lines are found whatever the chunk boundaries; blank lines and CR are dropped; overlong lines flagged', async () => {
    const text = fc.array(fc.string({ unit: 'grapheme', maxLength: 12 }), { maxLength: 12 })
    await fc.assert(
      fc.asyncProperty(text, fc.array(fc.nat(), { maxLength: 6 }), fc.boolean(), async (ls, cuts, crlf) => {
        const clean = ls.map((l) => l.replace(/[\r\n\uFEFF]/g, ''))
        const bytes = Buffer.from(clean.join(crlf ? '\r\n' : '\n'))
        const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
        const chunks = [0, ...points, bytes.length]
          .slice(1)
          .map((end, i, ends) => bytes.subarray(i === 0 ? 0 : ends[i - 1], end))
        const got = await collect(lines(Readable.from([bytes.subarray(0, 0), ...chunks])))
        expect(got).toEqual(clean.filter((l) => l.trim().length > 0))
      }),
    )
    const long = await collect(
      lines(Readable.from([Buffer.from('x'.repeat(50)), Buffer.from('y'.repeat(50)), Buffer.from('z\n{"a":1}\n')]), 64),
    )
    expect(long).toEqual([null, '{"a":1}'])
  })
})

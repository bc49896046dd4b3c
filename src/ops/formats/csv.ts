// CSV for spreadsheet users: written with csv-stringify a page at a time, read with csv-parse as a stream.
// Layouts (docs/privacy.md): the single-file export is long (`device,metric,time,value,lat,lon,alt,acc`, one row per
// stored row, `metric` = a readings key or `position`); the bundle's per-metric files name the value column after
// the metric (`device,time,hr`; positions `device,time,lat,lon,alt,acc`). Import takes either, and also wide files
// from other apps: a `time` (ISO 8601) or `t` (epoch ms) column and any readings keys as columns, `device` optional.
import type { Readable } from 'node:stream'
import { parse } from 'csv-parse'
import { stringify } from 'csv-stringify/sync'
import { formatByKey, type ImportItem, isoTime, jsonNumber, parseTime } from './omh.js'

export const LONG_COLUMNS = ['device', 'metric', 'time', 'value', 'lat', 'lon', 'alt', 'acc'] as const
export const POSITION_COLUMNS = ['device', 'time', 'lat', 'lon', 'alt', 'acc'] as const
export const metricColumns = (key: string): string[] => ['device', 'time', key]

export type Cell = string | number | null

// Numbers as their shortest exact text (csv-stringify's default would print -0 as 0).
const OPTIONS = { cast: { number: (v: number) => jsonNumber(v) } }

export function csvHeader(columns: readonly string[]): string {
  return stringify([columns as string[]], OPTIONS)
}

export function csvRows(rows: Cell[][]): string {
  return rows.length === 0 ? '' : stringify(rows, OPTIONS)
}

/** One stored sample in the long layout. */
export const longSample = (device: string, key: string, tMs: number, value: number): Cell[] => [
  device,
  key,
  isoTime(tMs),
  value,
  null,
  null,
  null,
  null,
]

export const longPosition = (
  device: string,
  tMs: number,
  lat: number,
  lon: number,
  alt: number | null,
  acc: number | null,
): Cell[] => [device, 'position', isoTime(tMs), null, lat, lon, alt, acc]

const POSITION_KEYS = ['lat', 'lon', 'alt', 'acc'] as const
const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/

/** A cell as a number when it is one; other text goes on as text, which validation refuses as `wrong_type`. */
function cellValue(cell: string): unknown {
  return NUMBER_RE.test(cell) ? Number(cell) : cell
}

function recordToItem(r: Record<string, string>): ImportItem {
  const timeCell = r.time ?? r.t
  const t = timeCell === undefined ? undefined : parseTime(NUMBER_RE.test(timeCell) ? Number(timeCell) : timeCell)
  if (t === undefined) return { refused: 'bad_timestamp' }
  const device = r.device ? r.device : null
  const sample: Record<string, unknown> = { t }
  const metric = r.metric
  if (metric) {
    if (metric === 'position') {
      for (const k of POSITION_KEYS) if (r[k]) sample[k] = cellValue(r[k])
    } else if (formatByKey(metric) !== undefined) {
      sample[metric] = cellValue(r.value ?? '')
    } else {
      return { refused: 'unknown_metric' }
    }
    return { device, sample }
  }
  for (const [column, cell] of Object.entries(r)) {
    if (!cell || column === 'time' || column === 't' || column === 'device') continue
    if (formatByKey(column) !== undefined || (POSITION_KEYS as readonly string[]).includes(column)) {
      sample[column] = cellValue(cell)
    }
  }
  return { device, sample }
}

/** Records of a CSV stream as import items; a malformed record is refused (`malformed_csv`) and the rest still read. */
export async function* csvItems(input: Readable): AsyncGenerator<ImportItem> {
  let skipped = 0
  const parser = input.pipe(
    parse({
      columns: (header: string[]) => header.map((h) => h.trim().toLowerCase()),
      bom: true,
      trim: true,
      skip_empty_lines: true,
      skip_records_with_error: true,
      max_record_size: 64 * 1024,
      on_skip: () => {
        skipped++
        return undefined
      },
    }),
  )
  input.once('error', (err) => parser.destroy(err))
  for await (const record of parser as AsyncIterable<Record<string, string>>) {
    for (; skipped > 0; skipped--) yield { refused: 'malformed_csv' }
    yield recordToItem(record)
  }
  for (; skipped > 0; skipped--) yield { refused: 'malformed_csv' }
}

// Open mHealth data points, one JSON object a line: what each stored metric becomes on export and how such a line
// (ours or another app's) maps back to a readings sample on import. The choices are documented in docs/privacy.md.
import crypto from 'node:crypto'
import { DERIVED_METRICS } from '../../pipeline/derive.js'
import { METRICS } from '../../pipeline/types.js'

export interface SchemaId {
  namespace: string
  name: string
  version: string
}

export interface MetricFormat {
  /** the stored smallint code (src/pipeline/types.ts METRICS, src/pipeline/derive.ts DERIVED_METRICS) */
  code: number
  /** the readings key (docs/readings.md); also the CSV column or `metric` value and the bundle's file stem */
  key: string
  schema: SchemaId
  /** the body property holding {value, unit} */
  property: string
  unit: string
  /** constant body members, as a JSON fragment starting with a comma */
  extra: string
  /** a count over the interval since the previous sample (steps): effective_time_frame is a time_interval */
  interval: boolean
}

const omh = (name: string, version: string): SchemaId => ({ namespace: 'omh', name, version })
const own = (name: string): SchemaId => ({ namespace: 'pulsegate', name, version: '1.0' })

/** Every metric pulsegate stores. Metrics with no Open mHealth schema get one in the `pulsegate` namespace. */
export const METRIC_FORMATS: readonly MetricFormat[] = [
  { code: METRICS.hr, key: 'hr', schema: omh('heart-rate', '2.0'), property: 'heart_rate', unit: 'beats/min' },
  {
    code: METRICS.spo2,
    key: 'spo2',
    schema: omh('oxygen-saturation', '2.0'),
    property: 'oxygen_saturation',
    unit: '%',
    extra: ',"system":"peripheral capillary","measurement_method":"pulse oximetry"',
  },
  {
    code: METRICS.steps,
    key: 'steps',
    schema: omh('step-count', '3.0'),
    property: 'step_count',
    unit: 'steps',
    interval: true,
  },
  { code: METRICS.cadence, key: 'cadence', schema: own('cadence'), property: 'cadence', unit: 'steps/min' },
  {
    code: METRICS.skin_temp,
    key: 'skin_temp',
    schema: omh('body-temperature', '4.0'),
    property: 'body_temperature',
    unit: 'C',
    extra: ',"measurement_location":"wrist"',
  },
  {
    code: METRICS.resp,
    key: 'resp',
    schema: omh('respiratory-rate', '2.0'),
    property: 'respiratory_rate',
    unit: 'breaths/min',
  },
  { code: DERIVED_METRICS.distance, key: 'distance', schema: own('distance'), property: 'distance', unit: 'm' },
].map((f) => ({ extra: '', interval: false, ...f }))

export const GEOPOSITION: SchemaId = omh('geoposition', '2.0')

const BY_CODE = new Map(METRIC_FORMATS.map((f) => [f.code, f]))
const BY_KEY = new Map(METRIC_FORMATS.map((f) => [f.key, f]))
const BY_SCHEMA = new Map(METRIC_FORMATS.map((f) => [f.schema.name, f]))

/** The format of a stored code; a code this build does not know is exported as `pulsegate:metric-<code>:1.0`. */
export function formatFor(code: number): MetricFormat {
  return (
    BY_CODE.get(code) ?? {
      code,
      key: `metric-${code}`,
      schema: own(`metric-${code}`),
      property: 'value',
      unit: '',
      extra: '',
      interval: false,
    }
  )
}

export function formatByKey(key: string): MetricFormat | undefined {
  return BY_KEY.get(key)
}

// UUIDv5 (RFC 9562 §5.5) ids: the same reading always gets the same id, so a re-export can be de-duplicated by id
// downstream. The namespace UUID is the 16 ASCII bytes "pulsegate-export" (70756c73-6567-6174-652d-6578706f7274),
// which lets namespace and name be hashed as one string with the one-shot crypto.hash.
const ID_NAMESPACE = 'pulsegate-export'

export function dataPointId(deviceId: string, key: string, tMs: number): string {
  const x = crypto.hash('sha1', `${ID_NAMESPACE}${deviceId}/${key}/${tMs}`, 'hex')
  // version 5 in the high nibble of byte 6, variant 10 in the high bits of byte 8
  const variant = ((Number.parseInt(x[16] as string, 16) & 0x3) | 0x8).toString(16)
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-5${x.slice(13, 16)}-${variant}${x.slice(17, 20)}-${x.slice(20, 32)}`
}

// ISO 8601 with milliseconds and Z, as Date#toISOString gives it, but with the "YYYY-MM-DDTHH:" part computed once
// per hour: readings come in time order, and toISOString per row was the export's largest single cost.
const HOUR = 3_600_000
const MAX_4_DIGIT_YEAR = 253_402_300_800_000 // 10000-01-01
let cachedHour = Number.NaN
let cachedPrefix = ''
const pad2 = (n: number) => (n < 10 ? `0${n}` : `${n}`)
const pad3 = (n: number) => (n < 10 ? `00${n}` : n < 100 ? `0${n}` : `${n}`)

/** ISO 8601 with milliseconds and Z; sub-millisecond parts are cut (pulsegate stores ms). */
export function isoTime(tMs: number): string {
  if (!(tMs >= 0 && tMs < MAX_4_DIGIT_YEAR)) return new Date(tMs).toISOString()
  const hour = Math.floor(tMs / HOUR)
  if (hour !== cachedHour) {
    cachedHour = hour
    cachedPrefix = new Date(hour * HOUR).toISOString().slice(0, 14)
  }
  const inHour = Math.floor(tMs - hour * HOUR)
  const min = Math.floor(inHour / 60_000)
  const sec = Math.floor((inHour % 60_000) / 1000)
  return `${cachedPrefix}${pad2(min)}:${pad2(sec)}.${pad3(inHour % 1000)}Z`
}

/** A stored double in JSON: the shortest text that parses back to the same double; -0 kept; NaN/±∞ become null. */
export function jsonNumber(v: number | null): string {
  if (v === null || !Number.isFinite(v)) return 'null'
  return Object.is(v, -0) ? '-0' : String(v)
}

/**
 * Lines for one device and user. Templates instead of JSON.stringify per row: ids and times are the only varying
 * strings and need no escaping; the constant parts are serialised once here.
 */
export class OmhLines {
  private readonly provenance: string
  private readonly user: string

  constructor(
    readonly deviceId: string,
    userId: string,
  ) {
    this.provenance = `"acquisition_provenance":{"source_name":${JSON.stringify(deviceId)},"modality":"sensed"}`
    this.user = JSON.stringify(userId)
  }

  private header(key: string, schema: SchemaId, tMs: number, iso: string): string {
    // creation_date_time is the reading's own time (not the export's), so exporting twice gives the same bytes.
    return `{"header":{"id":"${dataPointId(this.deviceId, key, tMs)}","creation_date_time":"${iso}","schema_id":${JSON.stringify(schema)},${this.provenance},"user_id":${this.user}}`
  }

  /** `prevMs`: the device's previous sample of this metric (the start of a steps interval), if any. */
  scalar(f: MetricFormat, tMs: number, value: number, prevMs: number | null): string {
    const iso = isoTime(tMs)
    // step-count-3.0 wants a time_interval: "steps since the previous sample" runs from that sample to this one.
    // The first sample a device ever sent has no known start; its interval is given as zero-length at its time.
    const frame = f.interval
      ? `{"time_interval":{"start_date_time":"${prevMs === null ? iso : isoTime(prevMs)}","end_date_time":"${iso}"}}`
      : `{"date_time":"${iso}"}`
    return `${this.header(f.key, f.schema, tMs, iso)},"body":{"${f.property}":{"value":${jsonNumber(value)},"unit":"${f.unit}"}${f.extra},"effective_time_frame":${frame}}}\n`
  }

  position(tMs: number, lat: number, lon: number, alt: number | null, acc: number | null): string {
    const iso = isoTime(tMs)
    const ele = alt === null ? '' : `,"elevation":{"value":${jsonNumber(alt)},"unit":"m"}`
    // geoposition-2.0 has no accuracy member (and does not forbid others): pulsegate's extension property.
    const hacc = acc === null ? '' : `,"horizontal_accuracy":{"value":${jsonNumber(acc)},"unit":"m"}`
    return `${this.header('position', GEOPOSITION, tMs, iso)},"body":{"latitude":{"value":${jsonNumber(lat)},"unit":"degree-decimal"},"longitude":{"value":${jsonNumber(lon)},"unit":"degree-decimal"}${ele}${hacc},"effective_time_frame":{"date_time":"${iso}"}}}\n`
  }
}

// ---- import ----

/** A parsed input record: a readings sample (docs/readings.md keys, plus `distance`) and the device it names, if any. */
export type ImportItem = { device: string | null; sample: Record<string, unknown> } | { refused: string }

const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/

/** Epoch ms from an ISO 8601 time with a zone, or a number (epoch ms, as in readings); undefined when neither. */
export function parseTime(v: unknown): number | undefined {
  if (typeof v === 'number') return v
  if (typeof v !== 'string' || !ISO_RE.test(v)) return undefined
  const t = Date.parse(v)
  return Number.isNaN(t) ? undefined : t
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Unit conversions accepted on import (other apps' data); ours needs none. */
const TO_CANONICAL: Record<string, Record<string, (v: number) => number>> = {
  C: { C: (v) => v, F: (v) => ((v - 32) * 5) / 9, K: (v) => v - 273.15 },
  m: { m: (v) => v, ft: (v) => v * 0.3048, km: (v) => v * 1000 },
}

/** The value of a {value, unit} member in `unit`; 'wrong_unit' when its unit is another one we cannot convert. */
function unitValue(member: unknown, unit: string, aliases: readonly string[] = []): unknown {
  if (!isObject(member)) return undefined
  const v = member.value
  const u = member.unit
  if (u === undefined || u === unit || aliases.includes(u as string)) return v
  const convert = TO_CANONICAL[unit]?.[u as string]
  if (convert === undefined) return WRONG_UNIT
  return typeof v === 'number' ? convert(v) : v
}
const WRONG_UNIT = Symbol('wrong_unit')

/** One NDJSON line (an Open mHealth data point) → an import item. */
export function parseDataPoint(line: string): ImportItem {
  let dp: unknown
  try {
    dp = JSON.parse(line)
  } catch {
    return { refused: 'malformed_json' }
  }
  if (!isObject(dp) || !isObject(dp.header) || !isObject(dp.body)) return { refused: 'not_a_data_point' }
  const { header, body } = dp
  const schema = header.schema_id
  const name = isObject(schema) ? schema.name : undefined
  const f = typeof name === 'string' ? BY_SCHEMA.get(name) : undefined
  if (f === undefined && name !== GEOPOSITION.name) return { refused: 'unknown_schema' }
  const source = isObject(header.acquisition_provenance) ? header.acquisition_provenance.source_name : undefined
  const device = typeof source === 'string' ? source : null
  const frame = body.effective_time_frame
  const when = isObject(frame)
    ? (frame.date_time ?? (isObject(frame.time_interval) ? frame.time_interval.end_date_time : undefined))
    : undefined
  const t = parseTime(when)
  if (t === undefined) return { refused: 'bad_timestamp' }

  if (name === GEOPOSITION.name) {
    const sample: Record<string, unknown> = {
      t,
      lat: unitValue(body.latitude, 'degree-decimal', ['deg']),
      lon: unitValue(body.longitude, 'degree-decimal', ['deg']),
    }
    if (body.elevation !== undefined) sample.alt = unitValue(body.elevation, 'm')
    if (body.horizontal_accuracy !== undefined) sample.acc = unitValue(body.horizontal_accuracy, 'm')
    if (Object.values(sample).includes(WRONG_UNIT)) return { refused: 'wrong_unit' }
    return { device, sample }
  }
  if (f === undefined) return { refused: 'unknown_schema' }
  const value = unitValue(body[f.property], f.unit)
  if (value === WRONG_UNIT) return { refused: 'wrong_unit' }
  return { device, sample: { t, [f.key]: value } }
}

// Stage 2: untrusted samples → accepted scalars/positions + per-sample rejections. Pure apart from `track`, which the
// caller keeps per device and which this updates in place (last accepted position, for cross-batch speed checks).

import {
  type DecodedBatch,
  METRICS,
  type MetricCode,
  type PositionSample,
  type Rejection,
  type ScalarSample,
  type ValidatedBatch,
} from './types.js'
import { acceptPositions, type DeviceTrack } from './validate-speed.js'

export { type DeviceTrack, haversineMeters } from './validate-speed.js'

export interface ValidationRules {
  /** epoch ms, injected for testability */
  now: number
  /** t > now + skew → 'future_timestamp' */
  maxFutureSkewMs: number
  /** t < now - window → 'too_old' */
  lateWindowMs: number
  /** implied speed from the previous accepted position above this → 'implausible_speed' */
  maxFootSpeedMps: number
}

export const DEFAULT_RULES: Omit<ValidationRules, 'now'> = Object.freeze({
  maxFutureSkewMs: 5 * 60_000,
  lateWindowMs: 7 * 24 * 3_600_000,
  maxFootSpeedMps: 12.5,
})

export type RejectionReason =
  | 'not_an_object'
  | 'bad_timestamp'
  | 'future_timestamp'
  | 'too_old'
  | 'wrong_type'
  | 'out_of_range'
  | 'missing_field'
  | 'poor_accuracy'
  | 'implausible_speed'
  | 'unknown_field'
  | 'empty_sample'
  | 'too_many_fields'

export type ValidationResult = ValidatedBatch & {
  /** readings dropped because an identical (metric, t) was already accepted earlier in this batch */
  inBatchDuplicates: number
}

/** Inclusive bounds; outside → 'out_of_range'. `integer` → a non-integer is 'wrong_type'. Documented in docs/readings.md. */
export const BOUNDS: Record<string, { min: number; max: number; integer?: boolean }> = Object.freeze({
  hr: Object.freeze({ min: 25, max: 250 }), // beats/min
  spo2: Object.freeze({ min: 50, max: 100 }), // %
  steps: Object.freeze({ min: 0, max: 1000, integer: true }), // steps since the previous sample
  cadence: Object.freeze({ min: 0, max: 300 }), // steps/min
  skin_temp: Object.freeze({ min: 20, max: 45 }), // °C
  resp: Object.freeze({ min: 4, max: 80 }), // breaths/min
  lat: Object.freeze({ min: -90, max: 90 }), // degrees
  lon: Object.freeze({ min: -180, max: 180 }), // degrees
  alt: Object.freeze({ min: -500, max: 9000 }), // m
  acc: Object.freeze({ min: 0, max: 10_000 }), // m, horizontal accuracy
})

/** A position whose horizontal accuracy is worse than this (metres) is refused with 'poor_accuracy'. */
export const POOR_ACCURACY_M = 200
/** A sample object with more keys than this is refused whole ('too_many_fields'); the known keys number 11. */
export const MAX_SAMPLE_KEYS = 32
/** Unknown key names are echoed back in `field`, cut to this length. */
export const MAX_FIELD_NAME = 64

// ---- internal slot tables: slots 1..6 are the scalar metric codes, 7..10 the position fields ----

const S_LAT = 7
const S_LON = 8
const S_ALT = 9
const S_ACC = 10
const N_SLOTS = 11
const SCALAR_BITS = 0b1111110 // slots 1..6
const POSITION_BITS = (1 << S_LAT) | (1 << S_LON) | (1 << S_ALT) | (1 << S_ACC)

const SLOT_NAME: string[] = new Array<string>(N_SLOTS).fill('')
const SLOT_MIN = new Float64Array(N_SLOTS)
const SLOT_MAX = new Float64Array(N_SLOTS)
const SLOT_INT = new Uint8Array(N_SLOTS)

function defineSlot(slot: number, name: string): void {
  const b = BOUNDS[name]
  if (b === undefined) throw new Error(`no bounds for ${name}`)
  SLOT_NAME[slot] = name
  SLOT_MIN[slot] = b.min
  SLOT_MAX[slot] = b.max
  SLOT_INT[slot] = b.integer === true ? 1 : 0
}
for (const name of Object.keys(METRICS) as (keyof typeof METRICS)[]) defineSlot(METRICS[name], name)
defineSlot(S_LAT, 'lat')
defineSlot(S_LON, 'lon')
defineSlot(S_ALT, 'alt')
defineSlot(S_ACC, 'acc')

/** Scratch for the values of one sample, indexed by slot; only slots flagged in that sample's mask are read. */
const scratch: unknown[] = new Array<unknown>(N_SLOTS).fill(undefined)
/** Highest accepted t per scalar metric code in the current batch (fast path for in-batch duplicate detection). */
const lastT = new Float64Array(7)

/** null = acceptable; otherwise the rejection reason. */
function checkValue(slot: number, v: unknown): RejectionReason | null {
  if (typeof v !== 'number' || !Number.isFinite(v)) return 'wrong_type'
  if (SLOT_INT[slot] === 1 && !Number.isInteger(v)) return 'wrong_type'
  if (v < SLOT_MIN[slot]! || v > SLOT_MAX[slot]!) return 'out_of_range'
  return null
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null) return false
  const proto = Object.getPrototypeOf(v)
  return proto === Object.prototype || proto === null
}

function checkRules(rules: ValidationRules): void {
  if (
    !Number.isFinite(rules.now) ||
    !Number.isFinite(rules.maxFutureSkewMs) ||
    !Number.isFinite(rules.lateWindowMs) ||
    !(rules.maxFootSpeedMps > 0)
  ) {
    throw new RangeError('validateBatch: rules must be finite numbers and maxFootSpeedMps > 0')
  }
}

/**
 * Judge every sample of a decoded batch. Never throws on a batch decodeBatch returned (throws RangeError only for
 * nonsensical `rules`, a programming error). Updates `track.lastPos` to the newest accepted position.
 */
/** One batch's results as they are built; the per-kind steps below add to it. One object per batch, none per sample. */
interface BatchWork {
  seq: number
  scalars: ScalarSample[]
  positions: PositionSample[]
  rejections: Rejection[]
  duplicates: number
  /** per metric code, the accepted t values; built only once a batch goes back in time for that metric */
  seenT: (Set<number> | undefined)[] | undefined
  /** position candidates (shape-valid), in sample order, with their sample index */
  cands: PositionSample[] | undefined
  candIdx: number[] | undefined
  candsSorted: boolean
}

/** Unknown keys of the current sample (rare): one list for all samples, emptied for each. */
const unknownKeys: string[] = []

/**
 * Validates a decoded batch sample by sample: the timestamp, then each kind of field — scalar metrics
 * (judgeScalars), a GPS fix (judgePosition), then the fixes' speed in time order (acceptPositions). Valid samples of
 * a batch are kept whatever happens to the others; every refusal says its reason, field and sample index.
 */
export function validateBatch(batch: DecodedBatch, rules: ValidationRules, track: DeviceTrack): ValidationResult {
  checkRules(rules)
  const samples = batch.samples
  const n = samples.length
  const minT = rules.now - rules.lateWindowMs
  const maxT = rules.now + rules.maxFutureSkewMs
  const w: BatchWork = {
    seq: batch.seq,
    scalars: [],
    positions: [],
    rejections: [],
    duplicates: 0,
    seenT: undefined,
    cands: undefined,
    candIdx: undefined,
    candsSorted: true,
  }
  lastT.fill(Number.NEGATIVE_INFINITY)

  for (let i = 0; i < n; i++) {
    const s = samples[i]
    if (!isPlainObject(s)) {
      w.rejections.push({ seq: w.seq, reason: 'not_an_object', field: null, index: i })
      continue
    }
    const t = s['t']
    const bad = timeReason(t, minT, maxT)
    if (bad !== null) {
      w.rejections.push({ seq: w.seq, reason: bad, field: 't', index: i })
      continue
    }
    const mask = sortFields(s)
    if (mask < 0) {
      w.rejections.push({ seq: w.seq, reason: 'too_many_fields', field: null, index: i })
      continue
    }
    if (!judgeFields(mask, w, i)) continue
    if ((mask & SCALAR_BITS) !== 0) judgeScalars(mask, t as number, i, w)
    if ((mask & POSITION_BITS) !== 0) judgePosition(mask, t as number, i, w)
  }
  scratch.fill(undefined) // drop references into the input

  if (w.cands !== undefined && w.candIdx !== undefined) {
    w.duplicates += acceptPositions(
      w.cands,
      w.candIdx,
      w.candsSorted,
      w.seq,
      rules.maxFootSpeedMps,
      track,
      w.positions,
      w.rejections,
    )
  }
  return {
    seq: w.seq,
    scalars: w.scalars,
    positions: w.positions,
    rejections: w.rejections,
    inBatchDuplicates: w.duplicates,
  }
}

/** The timestamp: a safe integer (epoch ms) inside [now − late window, now + clock skew]. */
function timeReason(t: unknown, minT: number, maxT: number): 'bad_timestamp' | 'future_timestamp' | 'too_old' | null {
  if (typeof t !== 'number' || !Number.isSafeInteger(t)) return 'bad_timestamp'
  if (t > maxT) return 'future_timestamp'
  if (t < minT) return 'too_old'
  return null
}

/**
 * Sorts the sample's keys into slots (scratch), returning the mask of slots present, or −1 past MAX_SAMPLE_KEYS.
 * Unknown keys go to unknownKeys.
 */
function sortFields(s: Record<string, unknown>): number {
  let mask = 0
  let keys = 0
  unknownKeys.length = 0
  for (const key in s) {
    if (++keys > MAX_SAMPLE_KEYS) return -1
    switch (key) {
      case 't':
        break
      case 'hr':
        scratch[1] = s[key]
        mask |= 1 << 1
        break
      case 'spo2':
        scratch[2] = s[key]
        mask |= 1 << 2
        break
      case 'steps':
        scratch[3] = s[key]
        mask |= 1 << 3
        break
      case 'cadence':
        scratch[4] = s[key]
        mask |= 1 << 4
        break
      case 'skin_temp':
        scratch[5] = s[key]
        mask |= 1 << 5
        break
      case 'resp':
        scratch[6] = s[key]
        mask |= 1 << 6
        break
      case 'lat':
        scratch[S_LAT] = s[key]
        mask |= 1 << S_LAT
        break
      case 'lon':
        scratch[S_LON] = s[key]
        mask |= 1 << S_LON
        break
      case 'alt':
        scratch[S_ALT] = s[key]
        mask |= 1 << S_ALT
        break
      case 'acc':
        scratch[S_ACC] = s[key]
        mask |= 1 << S_ACC
        break
      default:
        unknownKeys.push(key)
    }
  }
  return mask
}

/** Unknown fields are refused one by one (the known ones are still judged); a sample with no field is refused. */
function judgeFields(mask: number, w: BatchWork, i: number): boolean {
  if (unknownKeys.length > 0) {
    for (let k = 0; k < unknownKeys.length; k++) {
      const name = unknownKeys[k]!
      const field = name.length > MAX_FIELD_NAME ? name.slice(0, MAX_FIELD_NAME) : name
      w.rejections.push({ seq: w.seq, reason: 'unknown_field', field, index: i })
    }
    return true
  }
  if (mask === 0) {
    w.rejections.push({ seq: w.seq, reason: 'empty_sample', field: null, index: i })
    return false
  }
  return true
}

/** hr, spo2, steps, cadence, skin_temp, resp: bounds per metric, and one value per (metric, t) in the batch. */
function judgeScalars(mask: number, t: number, i: number, w: BatchWork): void {
  for (let code = 1; code <= 6; code++) {
    if ((mask & (1 << code)) === 0) continue
    const v = scratch[code]
    const reason = checkValue(code, v)
    if (reason !== null) {
      w.rejections.push({ seq: w.seq, reason, field: SLOT_NAME[code]!, index: i })
      continue
    }
    if (t > lastT[code]!) {
      lastT[code] = t
      w.seenT?.[code]?.add(t)
    } else {
      // Out of order for this metric: consult (and if need be build) the set of accepted t.
      if (w.seenT === undefined) w.seenT = []
      let set = w.seenT[code]
      if (set === undefined) {
        set = new Set<number>()
        for (let k = 0; k < w.scalars.length; k++) {
          const sc = w.scalars[k]!
          if (sc.metric === code) set.add(sc.t)
        }
        w.seenT[code] = set
      }
      if (set.has(t)) {
        w.duplicates++
        continue
      }
      set.add(t)
    }
    w.scalars.push({ metric: code as MetricCode, t, value: v as number })
  }
}

/** A GPS fix: lat and lon required, bounds on all four, accuracy no worse than POOR_ACCURACY_M; speed comes later. */
function judgePosition(mask: number, t: number, i: number, w: BatchWork): void {
  const rejections = w.rejections
  const seq = w.seq
  const before = rejections.length
  if ((mask & (1 << S_LAT)) === 0) rejections.push({ seq, reason: 'missing_field', field: 'lat', index: i })
  if ((mask & (1 << S_LON)) === 0) rejections.push({ seq, reason: 'missing_field', field: 'lon', index: i })
  for (let slot = S_LAT; slot <= S_ACC; slot++) {
    if ((mask & (1 << slot)) === 0) continue
    const reason = checkValue(slot, scratch[slot])
    if (reason !== null) rejections.push({ seq, reason, field: SLOT_NAME[slot]!, index: i })
  }
  const hasAcc = (mask & (1 << S_ACC)) !== 0
  if (rejections.length === before && hasAcc && (scratch[S_ACC] as number) > POOR_ACCURACY_M) {
    rejections.push({ seq, reason: 'poor_accuracy', field: 'acc', index: i })
  }
  if (rejections.length !== before) return
  const p: PositionSample = {
    t,
    lat: scratch[S_LAT] as number,
    lon: scratch[S_LON] as number,
    alt: (mask & (1 << S_ALT)) !== 0 ? (scratch[S_ALT] as number) : null,
    acc: hasAcc ? (scratch[S_ACC] as number) : null,
  }
  if (w.cands === undefined || w.candIdx === undefined) {
    w.cands = [p]
    w.candIdx = [i]
  } else {
    if (t < w.cands[w.cands.length - 1]!.t) w.candsSorted = false
    w.cands.push(p)
    w.candIdx.push(i)
  }
}

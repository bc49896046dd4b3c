// Alert rules as pure functions over a user's recent window: testable with synthetic streams, no I/O.
// Numbers from the domain reference (§3): Apple-style sustained thresholds while inactive, Tanaka max HR, and the race
// pattern "stopped moving + HR missing or abnormal" instead of high HR (normal in a race).
import { haversineMeters } from '../pipeline/validate-speed.js'
import type { AlertKind, Severity } from './payloads.js'

export interface HrPoint {
  t: number
  hr: number
}
export interface PosPoint {
  t: number
  lat: number
  lon: number
}

export interface Window {
  hr: HrPoint[]
  spo2: { t: number; v: number }[]
  steps: { t: number; v: number }[]
  pos: PosPoint[]
}

export interface Profile {
  age: number | null
  hrHigh: number | null
  hrLow: number | null
}

export interface RuleSettings {
  hrHigh: number // default high threshold (bpm)
  hrLow: number
  sustainedMs: number // Apple: 10 minutes
  fraction: number // share of readings past the threshold in the window
  maxHrMarginBpm: number
  maxHrSustainedMs: number
  stoppedMs: number // race: no movement for this long
  stoppedRadiusM: number // "no movement": every fix of the span within this distance of its first
  hrMissingMs: number
  movingMps: number
  spo2Low: number
  spo2Critical: number
  spo2SustainedMs: number
  inactiveStepsPerMin: number
}

export const DEFAULT_RULES: RuleSettings = {
  hrHigh: 120,
  hrLow: 40,
  sustainedMs: 10 * 60_000,
  fraction: 0.8,
  maxHrMarginBpm: 5,
  maxHrSustainedMs: 60_000,
  stoppedMs: 90_000,
  // A wrist GPS standing still wanders a few metres; 25 m over 90 s is the old 0.3 m/s mean-speed bound.
  stoppedRadiusM: 25,
  hrMissingMs: 30_000,
  movingMps: 1.5,
  spo2Low: 90,
  spo2Critical: 85,
  spo2SustainedMs: 60_000,
  inactiveStepsPerMin: 30,
}

/** Tanaka, Monahan & Seals 2001; 40 years when the age is unknown (a safe middle). */
export function predictedMaxHr(age: number | null): number {
  return Math.round(208 - 0.7 * (age ?? 40))
}

export interface Finding {
  kind: AlertKind
  /** true: the condition holds now; false: it clearly no longer holds (hysteresis) */
  active: boolean
  severity: Severity
  t: number
  evidence: Record<string, number | null>
}

/** the validator's great-circle distance, so a rule and the speed check never disagree about a metre */
const dist = (a: PosPoint, b: PosPoint): number => haversineMeters(a.lat, a.lon, b.lat, b.lon)

/** Fixes are averaged over buckets of this length before speed is measured: 10 fixes at 1 Hz, noise ÷ ~3. */
export const SPEED_BUCKET_MS = 10_000
/** A bucket's mean counts as movement once it is this far from the last counted one. */
export const SPEED_NOISE_M = 10

/**
 * Mean speed over the last `spanMs` of fixes (null without two fixes in the span). Not the path length of the raw
 * fixes: a standing watch's GPS wanders ±2.5 m once a second, which alone reads ~1 m/s, and a phone's ±10 m reads
 * as running — a person at rest would never be "inactive" (hr_high), and noise would resolve a medic's
 * stopped_abnormal or raise sensor_lost. So the fixes are averaged per SPEED_BUCKET_MS, a bucket counts once it is
 * SPEED_NOISE_M from the last counted one, and the stretch since then is added at the end (a runner's pace is not
 * cut short; at rest it is at most that noise over the span).
 */
export function recentSpeed(pos: readonly PosPoint[], now: number, spanMs: number): number | null {
  let firstT = 0
  let lastT = 0
  let anchor: PosPoint | null = null
  let mean: PosPoint | null = null
  let meters = 0
  let bucket = Number.NaN
  let n = 0
  let sumT = 0
  let sumLat = 0
  let sumLon = 0
  const close = () => {
    if (n === 0) return
    mean = { t: sumT / n, lat: sumLat / n, lon: sumLon / n }
    if (!anchor) {
      anchor = mean
      firstT = mean.t
    } else {
      const d = dist(anchor, mean)
      if (d >= SPEED_NOISE_M) {
        meters += d
        anchor = mean
      }
    }
    lastT = mean.t
    n = sumT = sumLat = sumLon = 0
  }
  for (let i = firstAt(pos, now - spanMs); i < pos.length; i++) {
    const p = pos[i] as PosPoint
    const b = Math.floor(p.t / SPEED_BUCKET_MS)
    if (b !== bucket) {
      close()
      bucket = b
    }
    n++
    sumT += p.t
    sumLat += p.lat
    sumLon += p.lon
  }
  close()
  if (!anchor || !mean || lastT <= firstT) return null
  if (mean !== anchor) meters += dist(anchor, mean)
  return meters / ((lastT - firstT) / 1000)
}

/**
 * Index of the first point at or after `from`. Windows are kept in time order, so a binary search: the rules run on
 * every committed batch, and at race-day rates copying 10-minute windows to filter them was measurable.
 */
function firstAt<T extends { t: number }>(xs: readonly T[], from: number): number {
  let lo = 0
  let hi = xs.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if ((xs[mid] as T).t < from) lo = mid + 1
    else hi = mid
  }
  return lo
}

function since<T extends { t: number }>(xs: readonly T[], from: number): T[] {
  return xs.slice(firstAt(xs, from))
}

/** Sustained-threshold test: enough readings, spanning most of the window, mostly past the threshold. */
function sustained(points: readonly HrPoint[], now: number, spanMs: number, past: (hr: number) => boolean) {
  const i0 = firstAt(points, now - spanMs)
  const count = points.length - i0
  if (count < 2) return null
  const last = points[points.length - 1] as HrPoint
  const span = last.t - (points[i0] as HrPoint).t
  if (span < spanMs * 0.8) return null
  let n = 0
  for (let i = i0; i < points.length; i++) if (past((points[i] as HrPoint).hr)) n++
  const confirmed = past((points[points.length - 2] as HrPoint).hr) && past(last.hr)
  return { ratio: n / count, confirmed, count }
}

export interface EvalContext {
  now: number
  inRace: boolean
  profile: Profile
  settings: RuleSettings
}

/** Evaluates every rule; returns the rules with a clear verdict (an undecided rule is left out). */
export function evaluate(w: Window, ctx: EvalContext): Finding[] {
  const { now, settings: s, profile } = ctx
  const out: Finding[] = []
  const lastHr = w.hr[w.hr.length - 1]
  const speed = recentSpeed(w.pos, now, 60_000)
  let stepsLastMin = 0
  for (let i = firstAt(w.steps, now - 60_000); i < w.steps.length; i++) stepsLastMin += (w.steps[i] as { v: number }).v
  const inactive = (speed === null || speed < 0.5) && stepsLastMin < s.inactiveStepsPerMin

  // Sustained high HR while inactive — never in a race, where high HR is the point.
  if (!ctx.inRace) {
    const high = profile.hrHigh ?? s.hrHigh
    const r = sustained(w.hr, now, s.sustainedMs, (hr) => hr > high)
    if (r && lastHr) {
      if (r.ratio >= s.fraction && r.confirmed && inactive) {
        out.push({
          kind: 'hr_high',
          active: true,
          severity: 'warning',
          t: lastHr.t,
          evidence: { hr: lastHr.hr, threshold: high, windowS: s.sustainedMs / 1000 },
        })
      } else if (r.ratio < 0.5 || !r.confirmed) {
        out.push({
          kind: 'hr_high',
          active: false,
          severity: 'warning',
          t: lastHr.t,
          evidence: { hr: lastHr.hr, threshold: high },
        })
      }
    }
  }

  const low = profile.hrLow ?? s.hrLow
  const rl = sustained(w.hr, now, s.sustainedMs, (hr) => hr < low)
  if (rl && lastHr) {
    if (rl.ratio >= s.fraction && rl.confirmed) {
      out.push({
        kind: 'hr_low',
        active: true,
        severity: 'warning',
        t: lastHr.t,
        evidence: { hr: lastHr.hr, threshold: low, windowS: s.sustainedMs / 1000 },
      })
    } else if (rl.ratio < 0.5 || !rl.confirmed) {
      out.push({
        kind: 'hr_low',
        active: false,
        severity: 'warning',
        t: lastHr.t,
        evidence: { hr: lastHr.hr, threshold: low },
      })
    }
  }

  // Above the personal predicted max, sustained (≥3 readings over the span, all above).
  const max = predictedMaxHr(profile.age) + s.maxHrMarginBpm
  const recent = since(w.hr, now - s.maxHrSustainedMs)
  if (recent.length >= 3 && lastHr) {
    const span = lastHr.t - (recent[0] as HrPoint).t
    if (span >= s.maxHrSustainedMs * 0.5 && recent.every((p) => p.hr > max)) {
      out.push({
        kind: 'hr_above_max',
        active: true,
        severity: 'warning',
        t: lastHr.t,
        evidence: { hr: lastHr.hr, threshold: max },
      })
    } else if (lastHr.hr <= max - 5) {
      out.push({
        kind: 'hr_above_max',
        active: false,
        severity: 'warning',
        t: lastHr.t,
        evidence: { hr: lastHr.hr, threshold: max },
      })
    }
  }

  const lastPos = w.pos[w.pos.length - 1]
  const hrAge = lastHr ? now - lastHr.t : Number.POSITIVE_INFINITY
  const hrMissing = hrAge >= s.hrMissingMs
  // Race: stopped moving for a while (fixes still arriving) and HR missing or abnormal → medics, with the position.
  if (ctx.inRace && lastPos) {
    const span = since(w.pos, now - s.stoppedMs)
    const first = span[0] as PosPoint | undefined
    const covered = first !== undefined && span.length >= 2 && lastPos.t - first.t >= s.stoppedMs * 0.8
    // Stopped = the fixes stay within a small radius, not "low mean speed along the path": the path length of a
    // standing watch's GPS noise (±2.5 m, once a second) alone is ~1 m/s, so a collapsed runner never looked stopped.
    const stopped = covered && span.every((p) => dist(first, p) <= s.stoppedRadiusM)
    const stoppedSpeed = covered ? dist(first, lastPos) / ((lastPos.t - first.t) / 1000) : null
    const abnormal = lastHr !== undefined && !hrMissing && (lastHr.hr > 190 || lastHr.hr < 40)
    if (stopped && (hrMissing || abnormal)) {
      out.push({
        kind: 'stopped_abnormal',
        active: true,
        severity: 'critical',
        t: Math.max(lastPos.t, lastHr?.t ?? 0),
        evidence: {
          hr: hrMissing ? null : (lastHr?.hr ?? null),
          speedMps: stoppedSpeed,
          lat: lastPos.lat,
          lon: lastPos.lon,
        },
      })
    } else if (speed !== null && speed > s.movingMps && !hrMissing) {
      out.push({
        kind: 'stopped_abnormal',
        active: false,
        severity: 'critical',
        t: lastPos.t,
        evidence: { speedMps: speed },
      })
    }
  }

  // HR signal lost while GPS says the wearer is moving: the sensor is off the wrist or failing.
  if (lastPos && speed !== null) {
    if (hrMissing && speed > s.movingMps && lastPos.t >= now - 10_000) {
      out.push({
        kind: 'sensor_lost',
        active: true,
        severity: 'info',
        t: lastPos.t,
        evidence: { speedMps: speed, hr: null },
      })
    } else if (!hrMissing && lastHr) {
      out.push({ kind: 'sensor_lost', active: false, severity: 'info', t: lastHr.t, evidence: { hr: lastHr.hr } })
    }
  }

  // Sustained = the latest run of low readings spans the time, however dense they are (every reading of a 2× window
  // low, as before, made a minute take two) and bridging gaps of up to that window (sparse spot checks).
  const sp = since(w.spo2, now - s.spo2SustainedMs * 2)
  const lastSp = w.spo2[w.spo2.length - 1]
  if (sp.length >= 2 && lastSp) {
    let runStart = sp.length
    while (runStart > 0 && (sp[runStart - 1] as { v: number }).v < s.spo2Low) runStart--
    const runFirst = sp[runStart]
    const span = runFirst && sp.length - runStart >= 2 ? lastSp.t - runFirst.t : 0
    if (span >= s.spo2SustainedMs) {
      out.push({
        kind: 'spo2_low',
        active: true,
        severity: lastSp.v < s.spo2Critical ? 'critical' : 'warning',
        t: lastSp.t,
        evidence: { spo2: lastSp.v, threshold: s.spo2Low },
      })
    } else if (lastSp.v >= s.spo2Low + 2) {
      out.push({ kind: 'spo2_low', active: false, severity: 'warning', t: lastSp.t, evidence: { spo2: lastSp.v } })
    }
  }
  return out
}

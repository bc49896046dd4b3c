// Alert rules on synthetic streams: each fires on its pattern, stays quiet otherwise, respects per-user thresholds.
import { describe, expect, it } from 'vitest'
import {
  DEFAULT_RULES,
  evaluate,
  type Finding,
  predictedMaxHr,
  recentSpeed,
  type Window,
} from '../../src/outputs/rules.js'

const NOW = 1_764_061_200_000
const empty = (): Window => ({ hr: [], spo2: [], steps: [], pos: [] })
const ctx = (over: Partial<Parameters<typeof evaluate>[1]> = {}) => ({
  now: NOW,
  inRace: false,
  profile: { age: null, hrHigh: null, hrLow: null },
  settings: DEFAULT_RULES,
  ...over,
})
const find = (fs: Finding[], kind: string) => fs.find((f) => f.kind === kind)

/** HR every `step` ms over the last `spanMs`, value from a function of the index. */
function hrSeries(w: Window, spanMs: number, step: number, hr: (i: number) => number): void {
  for (let t = NOW - spanMs, i = 0; t <= NOW; t += step, i++) w.hr.push({ t, hr: hr(i) })
}
/** Positions moving north at `mps` over the last `spanMs`. */
function walk(w: Window, spanMs: number, step: number, mps: number): void {
  for (let t = NOW - spanMs; t <= NOW; t += step) {
    const meters = (mps * (t - (NOW - spanMs))) / 1000
    w.pos.push({ t, lat: 52.5 + meters / 111_195, lon: 13.4 })
  }
}

describe('sustained high HR while inactive', () => {
  it('fires after 10 minutes above the threshold at rest', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 130)
    expect(find(evaluate(w, ctx()), 'hr_high')).toMatchObject({
      active: true,
      severity: 'warning',
      evidence: { threshold: 120 },
    })
  })
  it('does not fire for a shorter episode', () => {
    const w = empty()
    hrSeries(w, 4 * 60_000, 10_000, () => 130)
    expect(find(evaluate(w, ctx()), 'hr_high')?.active).not.toBe(true)
  })
  it('does not fire while the wearer is active (steps)', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 130)
    for (let t = NOW - 60_000; t <= NOW; t += 10_000) w.steps.push({ t, v: 25 })
    expect(find(evaluate(w, ctx()), 'hr_high')?.active).not.toBe(true)
  })
  it('does not fire in a race for high HR alone', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 175)
    expect(find(evaluate(w, ctx({ inRace: true })), 'hr_high')).toBeUndefined()
  })
  it('respects a per-user threshold', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 130)
    expect(find(evaluate(w, ctx({ profile: { age: null, hrHigh: 140, hrLow: null } })), 'hr_high')?.active).toBe(false)
  })
  it('a single spike is not a finding (needs most of the window and two confirming readings)', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, (i) => (i === 30 ? 180 : 80))
    expect(find(evaluate(w, ctx()), 'hr_high')?.active).toBe(false)
  })
})

describe('sustained low HR', () => {
  it('fires below 40 for 10 minutes and clears when it recovers', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 36)
    expect(find(evaluate(w, ctx()), 'hr_low')?.active).toBe(true)
    const w2 = empty()
    hrSeries(w2, 10 * 60_000, 10_000, (i) => (i > 50 ? 60 : 36))
    expect(find(evaluate(w2, ctx()), 'hr_low')?.active).toBe(false)
  })
  it('per-user low threshold', () => {
    const w = empty()
    hrSeries(w, 10 * 60_000, 10_000, () => 44)
    expect(find(evaluate(w, ctx()), 'hr_low')?.active).toBe(false)
    expect(find(evaluate(w, ctx({ profile: { age: null, hrHigh: null, hrLow: 45 } })), 'hr_low')?.active).toBe(true)
  })
})

describe('above personal max HR (Tanaka)', () => {
  it('uses 208 − 0.7·age, with a safe default when the age is unknown', () => {
    expect(predictedMaxHr(30)).toBe(187)
    expect(predictedMaxHr(null)).toBe(180)
  })
  it('fires when a minute of readings is above max + margin, also in a race', () => {
    const w = empty()
    hrSeries(w, 60_000, 5_000, () => 200)
    expect(
      find(evaluate(w, ctx({ inRace: true, profile: { age: 30, hrHigh: null, hrLow: null } })), 'hr_above_max')?.active,
    ).toBe(true)
    const w2 = empty()
    hrSeries(w2, 60_000, 5_000, () => 185)
    expect(find(evaluate(w2, ctx({ profile: { age: 30, hrHigh: null, hrLow: null } })), 'hr_above_max')?.active).toBe(
      false,
    )
  })
})

describe('race: stopped moving with HR missing or abnormal', () => {
  it('fires when GPS shows no movement for 90 s and HR has been missing', () => {
    const w = empty()
    walk(w, 100_000, 5_000, 0)
    w.hr.push({ t: NOW - 60_000, hr: 150 })
    const f = find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')
    expect(f).toMatchObject({ active: true, severity: 'critical', evidence: { hr: null, lat: 52.5, lon: 13.4 } })
  })
  it('fires when stopped with an abnormal HR', () => {
    const w = empty()
    walk(w, 100_000, 5_000, 0)
    hrSeries(w, 100_000, 5_000, () => 205)
    expect(find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')?.active).toBe(true)
  })
  it('a runner stopped at an aid station with a normal HR is fine', () => {
    const w = empty()
    walk(w, 100_000, 5_000, 0)
    hrSeries(w, 100_000, 5_000, () => 120)
    expect(find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')?.active).not.toBe(true)
  })
  it('resolves when the runner moves again with HR', () => {
    const w = empty()
    walk(w, 60_000, 5_000, 3)
    hrSeries(w, 60_000, 5_000, () => 150)
    expect(find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')?.active).toBe(false)
  })
  it('fires for a collapsed runner whose standing GPS wanders a few metres each second', () => {
    // ±2.5 m of noise once a second: the path length alone is ~1 m/s, the position goes nowhere
    const w = empty()
    let seed = 7
    const noise = () => {
      seed = (seed * 48271) % 2147483647
      return (seed / 2147483647 - 0.5) * 5
    }
    for (let t = NOW - 100_000; t <= NOW; t += 1000) w.pos.push({ t, lat: 52.5 + noise() / 111_195, lon: 13.4 })
    hrSeries(w, 100_000, 1000, () => 34)
    expect(find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')?.active).toBe(true)
  })
  it('a runner who stopped only half of the span ago is not stopped yet', () => {
    const w = empty()
    walk(w, 100_000, 5_000, 3)
    for (const p of w.pos) if (p.t > NOW - 45_000) p.lat = (w.pos.find((q) => q.t >= NOW - 45_000) as typeof p).lat
    hrSeries(w, 100_000, 5_000, () => 34)
    expect(find(evaluate(w, ctx({ inRace: true })), 'stopped_abnormal')?.active).not.toBe(true)
  })
  it('never outside a race', () => {
    const w = empty()
    walk(w, 100_000, 5_000, 0)
    expect(find(evaluate(w, ctx()), 'stopped_abnormal')).toBeUndefined()
  })
})

describe('sensor lost and SpO2', () => {
  it('HR signal lost while GPS says moving fast', () => {
    const w = empty()
    walk(w, 60_000, 5_000, 3.5)
    w.hr.push({ t: NOW - 120_000, hr: 150 })
    expect(find(evaluate(w, ctx()), 'sensor_lost')?.active).toBe(true)
  })
  it('SpO2 below 90 for a minute; critical below 85; resolves at 92', () => {
    const w = empty()
    for (let t = NOW - 90_000; t <= NOW; t += 30_000) w.spo2.push({ t, v: 88 })
    expect(find(evaluate(w, ctx()), 'spo2_low')).toMatchObject({ active: true, severity: 'warning' })
    ;(w.spo2[w.spo2.length - 1] as { v: number }).v = 83
    expect(find(evaluate(w, ctx()), 'spo2_low')?.severity).toBe('critical')
    w.spo2.push({ t: NOW + 1, v: 95 })
    expect(find(evaluate(w, ctx({ now: NOW + 1 })), 'spo2_low')?.active).toBe(false)
  })
  it('a minute of low SpO2 after normal readings fires at the minute (dense readings, not all of a 2-minute window)', () => {
    const w = empty()
    for (let t = NOW - 110_000; t < NOW - 60_000; t += 5_000) w.spo2.push({ t, v: 96 })
    for (let t = NOW - 60_000; t <= NOW; t += 1_000) w.spo2.push({ t, v: 87 })
    expect(find(evaluate(w, ctx()), 'spo2_low')?.active).toBe(true)
    // 50 s is not yet a minute
    const short = empty()
    for (let t = NOW - 110_000; t < NOW - 50_000; t += 5_000) short.spo2.push({ t, v: 96 })
    for (let t = NOW - 50_000; t <= NOW; t += 1_000) short.spo2.push({ t, v: 87 })
    expect(find(evaluate(short, ctx()), 'spo2_low')?.active).not.toBe(true)
  })
  it('a single low SpO2 reading is not a finding', () => {
    const w = empty()
    w.spo2.push({ t: NOW, v: 85 })
    expect(find(evaluate(w, ctx()), 'spo2_low')).toBeUndefined()
  })
})

describe('speed from noisy GPS (recentSpeed)', () => {
  /** Fixes once a second over `spanMs`, moving north at `mps`, each off by up to ±noiseM on both axes (seeded). */
  function noisy(w: Window, spanMs: number, mps: number, noiseM: number, seed0 = 11): void {
    let seed = seed0
    const noise = () => {
      seed = (seed * 48271) % 2147483647
      return (seed / 2147483647 - 0.5) * 2 * noiseM
    }
    const mPerDegLon = 111_195 * Math.cos((52.5 * Math.PI) / 180)
    for (let t = NOW - spanMs; t <= NOW; t += 1000) {
      const north = (mps * (t - (NOW - spanMs))) / 1000 + noise()
      w.pos.push({ t, lat: 52.5 + north / 111_195, lon: 13.4 + noise() / mPerDegLon })
    }
  }
  for (const [device, noiseM] of [
    ['a watch', 2.5],
    ['a phone', 10],
  ] as const) {
    it(`standing still with ${device}'s GPS (±${noiseM} m a second) reads as standing, over many seeds`, () => {
      for (let seed = 1; seed <= 50; seed++) {
        const w = empty()
        noisy(w, 120_000, 0, noiseM, seed)
        // the raw path length would read ~1 m/s (watch) and ~4 m/s (phone)
        expect(recentSpeed(w.pos, NOW, 60_000)).toBeLessThan(0.3)
      }
    })
  }
  it('a runner at 3 m/s with ±5 m of noise: within 5 %', () => {
    for (let seed = 1; seed <= 20; seed++) {
      const w = empty()
      noisy(w, 120_000, 3, 5, seed)
      expect(Math.abs((recentSpeed(w.pos, NOW, 60_000) as number) - 3)).toBeLessThan(0.15)
    }
  })
  it("a walker at 1.2 m/s with a phone's ±10 m is moving", () => {
    const w = empty()
    noisy(w, 120_000, 1.2, 10)
    expect(recentSpeed(w.pos, NOW, 60_000)).toBeGreaterThan(0.9)
  })
  it('sparse fixes (one a minute apart) still give the speed between them', () => {
    const w = empty()
    w.pos.push({ t: NOW - 59_500, lat: 52.5, lon: 13.4 }, { t: NOW, lat: 52.5 + 200 / 111_195, lon: 13.4 })
    expect(recentSpeed(w.pos, NOW, 60_000)).toBeCloseTo(200 / 59.5, 4)
  })
  it('at rest with a phone: high HR alerts (hr_high), missing HR is not a lost sensor, a medic alert stays open', () => {
    const rest = empty()
    noisy(rest, 10 * 60_000, 0, 10)
    hrSeries(rest, 10 * 60_000, 10_000, () => 130)
    expect(find(evaluate(rest, ctx()), 'hr_high')?.active).toBe(true)
    const noHr = empty()
    noisy(noHr, 120_000, 0, 10)
    noHr.hr.push({ t: NOW - 120_000, hr: 150 })
    expect(find(evaluate(noHr, ctx()), 'sensor_lost')?.active).not.toBe(true)
    const down = empty()
    noisy(down, 120_000, 0, 10)
    hrSeries(down, 120_000, 1000, () => 34)
    // stopped_abnormal's own test is the 25 m radius (a phone's ±10 m can leave it); it must not be resolved by noise
    expect(find(evaluate(down, ctx({ inRace: true })), 'stopped_abnormal')?.active).not.toBe(false)
  })
})

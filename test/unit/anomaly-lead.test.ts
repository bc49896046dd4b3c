// The simulator's anomalies against the broker's own rules, offline: each kind, played through the physiology and a
// watch, raises its expected alert within anomalyLeadS after onset — the time the swarm leaves it before the run ends.
// A rule change that slows an alert (or a rule that never fires on realistic data, as stopped_abnormal did with GPS
// noise) fails here instead of as "anomalies missed" in a load run.
import { describe, expect, it } from 'vitest'
import { DEFAULT_RULES, evaluate, type Window } from '../../src/outputs/rules.js'
import { marathonCourse } from '../../simulators/course.js'
import { Tracker } from '../../simulators/device.js'
import {
  type AnomalyKind,
  anomalyLeadS,
  EXPECTED_ALERTS,
  Rng,
  randomProfile,
  randomRunnerPlan,
  Wearer,
} from '../../simulators/physiology.js'
import type { UserSpec } from '../../simulators/protocol.js'
import { placeAnomalies } from '../../simulators/swarm.js'

const course = marathonCourse()
const T0 = 1_764_061_200_000
const ONSET = T0 + 20_000

/** Seconds from onset to the first expected alert (null: none within `maxS`), sampling once a second like the swarm. */
function alertAfterS(kind: AnomalyKind, scenario: 'marathon' | 'wellness', brady: boolean, seed: number, maxS: number) {
  const rng = new Rng(seed)
  const profile = randomProfile(rng)
  const runner =
    scenario === 'marathon'
      ? randomRunnerPlan(rng, profile, T0 - 1_800_000, { fromMs: T0, toMs: T0 + 3_600_000 }, 0)
      : null
  const wearer = new Wearer(profile, scenario, seed, T0, runner, { kind, atMs: ONSET, brady }, course.lengthM)
  const watch = new Tracker(wearer, 'watch', true, scenario === 'marathon' ? course : null, seed * 7919)
  const w: Window = { hr: [], spo2: [], steps: [], pos: [] }
  for (let t = T0; t <= ONSET + maxS * 1000; t += 1000) {
    const s = watch.sample(t, 1)
    if (s.hr !== undefined) w.hr.push({ t, hr: s.hr })
    if (s.spo2 !== undefined) w.spo2.push({ t, v: s.spo2 })
    if (s.steps !== undefined) w.steps.push({ t, v: s.steps })
    if (s.lat !== undefined && s.lon !== undefined) w.pos.push({ t, lat: s.lat, lon: s.lon })
    if (t < ONSET) continue
    const findings = evaluate(w, {
      now: t,
      inRace: scenario === 'marathon',
      profile: { age: profile.age, hrHigh: null, hrLow: null },
      settings: DEFAULT_RULES,
    })
    if (findings.some((f) => f.active && EXPECTED_ALERTS[kind].includes(f.kind))) return (t - ONSET) / 1000
  }
  return null
}

const cases: [AnomalyKind, 'marathon' | 'wellness', boolean][] = [
  ['sensor_loss', 'marathon', false],
  ['spo2_low', 'marathon', false],
  ['spo2_low', 'wellness', false],
  ['cardiac', 'marathon', false],
  ['cardiac', 'marathon', true],
  ['cardiac', 'wellness', false],
  ['hr_high_rest', 'wellness', false],
]

describe('each simulated anomaly alerts through the broker rules within its lead time', () => {
  for (const [kind, scenario, brady] of cases) {
    it(`${kind}${kind === 'cardiac' ? (brady ? ' (bradycardia)' : ' (racing)') : ''} in ${scenario}`, () => {
      const leadS = anomalyLeadS(kind, scenario, brady)
      const seeds = kind === 'hr_high_rest' ? 6 : 30
      for (let seed = 1; seed <= seeds; seed++) {
        const s = alertAfterS(kind, scenario, brady, seed, leadS)
        expect(s, `seed ${seed}`).not.toBeNull()
        expect(s as number).toBeLessThanOrEqual(leadS)
      }
    })
  }
  it('a sensor loss without GPS (wellness) is never alertable, and the lead says so', () => {
    expect(anomalyLeadS('sensor_loss', 'wellness', false)).toBe(Number.POSITIVE_INFINITY)
  })
})

describe('placeAnomalies: only where the run leaves the rule its time', () => {
  const users = (n: number, rampPerS: number, bridgeEvery = 5): UserSpec[] =>
    Array.from({ length: n }, (_, i) => ({
      userId: `u${i}`,
      index: i,
      seed: i,
      via: i % bridgeEvery === 0 ? 'bridge' : 'direct',
      devices: [],
      app: null,
      bridgeToken: null,
      anomaly: null,
      startS: i / rampPerS,
      offline: false,
      dropOut: false,
    }))

  it('a 90 s race at 300 devices/s: every anomaly fits before the end; the kinds that cannot are reported', () => {
    const us = users(9_000, 300)
    const o = { anomalyShare: 0.01, durationS: 90, scenario: 'marathon' as const }
    const { anomalies, leftOut } = placeAnomalies(us, o, new Rng(1))
    const placed = us.filter((u) => u.anomaly)
    expect(placed).toHaveLength(90)
    for (const u of placed) {
      const a = u.anomaly as NonNullable<UserSpec['anomaly']>
      expect(a.atS).toBeGreaterThanOrEqual(u.startS + 1)
      expect(a.atS + anomalyLeadS(a.kind, 'marathon', a.brady ?? false)).toBeLessThanOrEqual(90)
      if (a.kind === 'sensor_loss') expect(u.via).toBe('direct')
      expect(u.app).not.toBeNull()
    }
    // 90 s leaves no time for a minute of low SpO2 (needs 90 s) nor the collapse rule (100 s): reported, not injected
    expect(leftOut).toEqual({ spo2_low: 90 })
    expect(anomalies.sensor_loss).toBeGreaterThan(0)
    expect(anomalies.cardiac).toBeGreaterThan(0)
    expect(placed.filter((u) => u.anomaly?.kind === 'cardiac').every((u) => u.anomaly?.brady === false)).toBe(true)
  })

  it('a long run injects every kind, onsets between 15 % and 40 % of it', () => {
    const us = users(2_000, 200)
    const { anomalies, leftOut } = placeAnomalies(
      us,
      { anomalyShare: 0.03, durationS: 600, scenario: 'marathon' },
      new Rng(2),
    )
    expect(leftOut).toEqual({})
    expect(Object.keys(anomalies).sort()).toEqual(['cardiac', 'sensor_loss', 'spo2_low'])
    for (const u of us.filter((x) => x.anomaly)) {
      expect(u.anomaly?.atS).toBeGreaterThanOrEqual(90)
      expect(u.anomaly?.atS).toBeLessThanOrEqual(240)
    }
  })

  it('an explicit onset too late for a kind leaves it out', () => {
    const us = users(100, 100)
    const o = { anomalyShare: 0.1, durationS: 40, scenario: 'marathon' as const, anomalyAtS: 4 }
    const { anomalies, leftOut } = placeAnomalies(us, { ...o, anomalyKinds: ['sensor_loss', 'spo2_low'] }, new Rng(3))
    expect(anomalies).toEqual({ sensor_loss: 10 })
    expect(leftOut).toEqual({ spo2_low: 90 })
  })
})

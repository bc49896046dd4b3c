// The wellness simulator's planting and scoring (simulators/wellness-history.ts): shares, zones, and the confusion
// counts and thresholds that decide the exit code.
import { describe, expect, it } from 'vitest'
import { lateMorningZone, planWellness, score, scoreFailures } from '../../simulators/wellness-history.js'

const users = Array.from({ length: 30 }, (_, i) => `u${String(i).padStart(2, '0')}`)

describe('wellness history plan', () => {
  it('plants an even share over the three rules, one condition per user, the same for the same seed', () => {
    const p = planWellness(users, { share: 0.3, seed: 7, days: 35, nowMs: Date.UTC(2026, 2, 26, 3) })
    expect(Object.values(p.planted).map((l) => l.length)).toEqual([3, 3, 3])
    const all = Object.values(p.planted).flat()
    expect(new Set(all).size).toBe(9)
    expect(planWellness(users, { share: 0.3, seed: 7, days: 35, nowMs: 0 }).planted).toEqual(p.planted)
    expect(planWellness(users, { share: 0.3, seed: 8, days: 35, nowMs: 0 }).planted).not.toEqual(p.planted)
  })

  it('plants no load jump without 28 days of history', () => {
    const p = planWellness(users, { share: 0.2, seed: 1, days: 20, nowMs: 0 })
    expect(p.planted.load_jump).toEqual([])
    expect(p.planted.rhr_elevated).toHaveLength(3)
  })

  it('puts the users where the run starts at 11:xx local', () => {
    expect(lateMorningZone(Date.UTC(2026, 0, 1, 11, 30))).toBe('Etc/GMT')
    expect(lateMorningZone(Date.UTC(2026, 0, 1, 4, 59))).toBe('Etc/GMT-7')
    expect(lateMorningZone(Date.UTC(2026, 0, 1, 23, 0))).toBe('Etc/GMT+12')
    expect(lateMorningZone(Date.UTC(2026, 0, 1, 0, 0))).toBe('Etc/GMT-11')
    for (let h = 0; h < 24; h++) {
      const z = lateMorningZone(Date.UTC(2026, 0, 1, h, 20))
      const local = new Intl.DateTimeFormat('en-GB', { timeZone: z, hour: '2-digit', hourCycle: 'h23' }).format(
        Date.UTC(2026, 0, 1, h, 20),
      )
      expect([z, local]).toEqual([z, '11'])
    }
  })
})

describe('wellness score', () => {
  const plan = planWellness(users, { share: 0.3, seed: 3, days: 35, nowMs: 0 })
  const exact = Object.entries(plan.planted).flatMap(([rule, us]) => us.map((u) => ({ user_id: u, rule })))

  it('counts true/false positives and negatives per planted rule', () => {
    const s = score(plan, users, exact)
    for (const r of Object.values(s)) {
      expect(r).toMatchObject({ truePositives: 3, falsePositives: 0, falseNegatives: 0, trueNegatives: 27 })
      expect([r.precision, r.recall]).toEqual([1, 1])
    }
    expect(scoreFailures(s, 1, 1)).toEqual([])
  })

  it('fails the thresholds on a missed and on an extra recommendation', () => {
    const control = users.find((u) => !Object.values(plan.planted).flat().includes(u)) as string
    const got = [
      ...exact.filter((g) => g.user_id !== plan.planted.step_goal[0]),
      { user_id: control, rule: 'load_jump' },
    ]
    const s = score(plan, users, got)
    expect(s.step_goal).toMatchObject({ truePositives: 2, falseNegatives: 1, falsePositives: 0 })
    expect(s.step_goal.recall).toBeCloseTo(2 / 3)
    expect(s.load_jump).toMatchObject({ truePositives: 3, falsePositives: 1, falsePositiveUsers: [control] })
    expect(s.load_jump.precision).toBe(0.75)
    expect(scoreFailures(s, 1, 1)).toEqual(['load_jump precision 0.750 < 1', 'step_goal recall 0.667 < 1'])
    expect(scoreFailures(s, 0.7, 0.6)).toEqual([])
  })

  it('other rules are not scored', () => {
    const s = score(plan, users, [...exact, { user_id: users[0] as string, rule: 'zone_minutes_weekly' }])
    expect(scoreFailures(s, 1, 1)).toEqual([])
  })
})

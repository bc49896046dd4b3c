// The rules' decisions on their edges, from the numbers their SQL hands over (the SQL itself runs in
// test/integration/insights-rules.test.ts on both stores), the wording rules, and local time across DST.
import { describe, expect, it } from 'vitest'
import { hhmm, inWindow, localInstant, localParts } from '../../src/insights/local-time.js'
import {
  buildPayload,
  type Candidate,
  DISCLAIMER,
  FORBIDDEN_WORDS,
  recommendationId,
} from '../../src/insights/payload.js'
import { decideSteps, decideZones, stepTarget, type ZonesInput } from '../../src/insights/rules/goals.js'
import { decideLoadJump, decideRecovery, type LoadInput } from '../../src/insights/rules/load.js'
import { decideMove, type MoveInput } from '../../src/insights/rules/move.js'
import { decideRhr, type RhrInput, rhrThreshold } from '../../src/insights/rules/rhr.js'

const AT = Date.parse('2026-03-26T08:00:00Z')
const rhr = (over: Partial<RhrInput> = {}): RhrInput => ({
  userId: 'u',
  today: '2026-03-26',
  todayEnd: Date.parse('2026-03-27T00:00:00Z'),
  nightClosed: true,
  n0: 58,
  n1: 58,
  coverage0: 1,
  coverage1: 1,
  median: 53,
  mad: 1,
  nights: 28,
  steps1: 8000,
  wear1: 1000,
  stepsMedian: 8000,
  episode: null,
  ...over,
})

describe('rhr_elevated', () => {
  it('threshold is max(4 bpm, 2 × 1.4826 × MAD)', () => {
    expect(rhrThreshold(1)).toBe(4)
    expect(rhrThreshold(2)).toBeCloseTo(5.93, 2)
    expect(rhrThreshold(null)).toBe(4)
  })
  it('fires at exactly +4 on both nights, not at +3.9 on one', () => {
    expect(decideRhr(rhr({ n0: 57, n1: 57 }), AT).candidate?.rule).toBe('rhr_elevated')
    expect(decideRhr(rhr({ n0: 57, n1: 56.9 }), AT).candidate).toBeNull()
  })
  it('a noisy baseline (MAD 3) needs more: +5 is not enough', () => {
    expect(decideRhr(rhr({ n0: 58, n1: 58, mad: 3 }), AT).candidate).toBeNull()
  })
  it('nothing with a missing night, fewer than 7 baseline nights, or before the night has closed', () => {
    expect(decideRhr(rhr({ n1: null }), AT).candidate).toBeNull()
    expect(decideRhr(rhr({ nights: 6 }), AT).candidate).toBeNull()
    expect(decideRhr(rhr({ nightClosed: false }), AT).candidate).toBeNull()
  })
  it('opens an episode; the same day again gives the same episode (same id); later days give nothing new', () => {
    const first = decideRhr(rhr(), AT)
    expect(first.episode).toMatchObject({ open: true, startedOn: '2026-03-26' })
    const ep = { startedOn: '2026-03-26', open: true, normalNights: 0, lastDay: '2026-03-26' }
    const again = decideRhr(rhr({ episode: ep }), AT + 60_000)
    expect(again.candidate && buildPayload(again.candidate).id).toBe(
      first.candidate && buildPayload(first.candidate).id,
    )
    expect(decideRhr(rhr({ today: '2026-03-27', episode: ep }), AT).candidate).toBeNull()
  })
  it('clears after two normal nights (< baseline + 2); a missing night counts for neither', () => {
    let ep = { startedOn: '2026-03-26', open: true, normalNights: 0, lastDay: '2026-03-26' }
    const step = (today: string, n0: number | null) => {
      const d = decideRhr(rhr({ today, n0, episode: ep }), AT)
      if (d.episode) ep = { ...ep, ...d.episode }
      return ep
    }
    expect(step('2026-03-27', 54.9).normalNights).toBe(1)
    expect(step('2026-03-28', null)).toMatchObject({ open: true, normalNights: 1 })
    expect(step('2026-03-29', 55)).toMatchObject({ open: true, normalNights: 0 }) // + 2: not normal
    step('2026-03-30', 53)
    expect(step('2026-03-31', 53)).toMatchObject({ open: false, normalNights: 2 })
  })
  it('says so when steps are also well below usual (the second signal)', () => {
    expect(decideRhr(rhr({ steps1: 5000 }), AT).candidate?.title).toBe('Take it easy today')
    expect(decideRhr(rhr({ steps1: 7000 }), AT).candidate?.title).toBe('Your resting heart rate is up')
  })
})

const zones = (over: Partial<ZonesInput>): ZonesInput => ({
  userId: 'u',
  today: '2026-03-26',
  todayEnd: 0,
  week: '2026-03-23',
  dow: 3,
  weekDays: 3,
  wtd: 30,
  wtdBefore: 20,
  covered: 3,
  ...over,
})
describe('zone_minutes_weekly', () => {
  it('nudges only the morning after Wednesday, and says what is missing', () => {
    expect(decideZones(zones({}), AT)?.episode).toBe('2026-03-23:midweek')
    expect(decideZones(zones({ dow: 2, weekDays: 2 }), AT)).toBeNull()
    expect(decideZones(zones({ wtd: 65 }), AT)).toBeNull() // 65 × 7/3 ≈ 152: on course
    expect(decideZones(zones({ covered: 1 }), AT)).toBeNull()
    expect(decideZones(zones({ covered: 2 }), AT)?.evidence.missing).toMatch(/1 of 3 days/)
  })
  it('celebrates 150 and 300 once each, on the day they are passed', () => {
    expect(decideZones(zones({ dow: 5, weekDays: 5, wtd: 150, wtdBefore: 149 }), AT)?.episode).toBe('2026-03-23:150')
    expect(decideZones(zones({ dow: 5, weekDays: 5, wtd: 310, wtdBefore: 140 }), AT)?.episode).toBe('2026-03-23:300')
    expect(decideZones(zones({ dow: 5, weekDays: 5, wtd: 200, wtdBefore: 150 }), AT)).toBeNull()
  })
})

describe('step_goal', () => {
  const steps = {
    userId: 'u',
    today: '2026-03-26',
    todayEnd: 0,
    age: 40,
    p60: 5000,
    validDays: 20,
    prevGoal: null,
    yesterday: 4800,
  }
  it('clamps to [3000, age target]; 7000 from age 60', () => {
    expect(stepTarget(59)).toBe(9000)
    expect(stepTarget(60)).toBe(7000)
    expect(decideSteps({ ...steps, p60: 1200 }, { mutedRules: [] }, AT)?.evidence.threshold).toBe('3000')
    expect(decideSteps({ ...steps, age: 70, p60: 6500 }, { mutedRules: [] }, AT)?.evidence.threshold).toBe('6500')
    expect(decideSteps({ ...steps, age: 70, p60: 7200 }, { mutedRules: [] }, AT)).toBeNull()
  })
  it('raises at most 10 % on the last goal; the user goal wins; needs 9 worn days', () => {
    expect(decideSteps({ ...steps, p60: 8000, prevGoal: 6000 }, { mutedRules: [] }, AT)?.evidence.threshold).toBe(
      '6600',
    )
    expect(decideSteps(steps, { mutedRules: [], goals: { steps: 12000 } }, AT)?.evidence.threshold).toBe('12000')
    expect(decideSteps({ ...steps, validDays: 8 }, { mutedRules: [] }, AT)).toBeNull()
  })
})

const load = (over: Partial<LoadInput> = {}): LoadInput => ({
  userId: 'u',
  today: '2026-03-26',
  todayEnd: 0,
  historyDays: 35,
  covered28: 28,
  floor: 50,
  acute1: 160,
  chronic1: 100,
  acute2: 155,
  chronic2: 100,
  load1: 200,
  rhr0: null,
  rhrBase: null,
  rhrNights: 0,
  raceYesterday: false,
  taper: false,
  postRace: false,
  ...over,
})
describe('load_jump and recovery_day', () => {
  it('ACWR ≥ 1.5 two days running, with ≥ 28 days of history and chronic above the floor', () => {
    expect(decideLoadJump(load(), AT)?.evidence.value).toBe(1.6)
    expect(decideLoadJump(load({ acute2: 149 }), AT)).toBeNull()
    expect(decideLoadJump(load({ historyDays: 27 }), AT)).toBeNull()
    expect(decideLoadJump(load({ covered28: 20 }), AT)).toBeNull()
    expect(decideLoadJump(load({ floor: 120 }), AT)).toBeNull() // after a holiday: no "ACWR = 6"
  })
  it('off during a taper (event within 14 days) and after a race', () => {
    expect(decideLoadJump(load({ taper: true }), AT)).toBeNull()
    expect(decideLoadJump(load({ postRace: true }), AT)).toBeNull()
  })
  it('recovery: a race yesterday; or a very high load day with the resting HR up, not either alone', () => {
    expect(decideRecovery(load({ raceYesterday: true }), AT)?.evidence.missing).toMatch(/no resting heart rate/)
    const hard = { load1: 250, chronic2: 100, rhrBase: 53, rhrNights: 20 }
    expect(decideRecovery(load({ ...hard, rhr0: 56 }), AT)?.rule).toBe('recovery_day')
    expect(decideRecovery(load({ ...hard, rhr0: 54 }), AT)).toBeNull()
    expect(decideRecovery(load({ ...hard, load1: 150, rhr0: 60 }), AT)).toBeNull()
  })
})

describe('move_reminder', () => {
  const still: MoveInput = {
    userId: 'u',
    tz: 'UTC',
    stepsHour: 0,
    steps50: 0,
    worn50: 50,
    hr10: 70,
    hrRest: 55,
    hrMax: 185,
  }
  const hours = { activeStart: '09:00', activeEnd: '18:00' }
  it('at :50 or later, inside the active hours after their first hour, when still and worn', () => {
    expect(decideMove(still, Date.parse('2026-03-26T14:50:00Z'), hours)?.expiresAt).toBe(
      Date.parse('2026-03-26T14:59:00Z'),
    )
    expect(decideMove(still, Date.parse('2026-03-26T14:49:00Z'), hours)).toBeNull()
    expect(decideMove(still, Date.parse('2026-03-26T09:55:00Z'), hours)).toBeNull() // first hour skipped
    expect(decideMove(still, Date.parse('2026-03-26T18:55:00Z'), hours)).toBeNull()
    expect(decideMove({ ...still, worn50: 39 }, Date.parse('2026-03-26T14:55:00Z'), hours)).toBeNull()
    expect(decideMove({ ...still, hr10: 110 }, Date.parse('2026-03-26T14:55:00Z'), hours)).toBeNull() // a workout
  })
  it("uses the user's zone: 14:55 UTC is 10:55 in New York (EDT), inside the hours", () => {
    const c = decideMove({ ...still, tz: 'America/New_York' }, Date.parse('2026-03-26T14:55:00Z'), hours)
    expect(c?.episode).toBe('2026-03-26T10')
  })
})

describe('local time', () => {
  it('DST: Berlin 29 March 2026 has no 02:xx; 07:00 is 05:00 UTC', () => {
    expect(localInstant('2026-03-29', 7 * 60, 'Europe/Berlin')).toBe(Date.parse('2026-03-29T05:00:00Z'))
    expect(localInstant('2026-03-29', 0, 'Europe/Berlin')).toBe(Date.parse('2026-03-28T23:00:00Z'))
    expect(localParts(Date.parse('2026-03-29T01:30:00Z'), 'Europe/Berlin')).toMatchObject({ hour: 3, minute: 30 })
  })
  it('windows past midnight', () => {
    expect(inWindow(hhmm('23:30'), hhmm('22:00'), hhmm('07:00'))).toBe(true)
    expect(inWindow(hhmm('06:59'), hhmm('22:00'), hhmm('07:00'))).toBe(true)
    expect(inWindow(hhmm('07:00'), hhmm('22:00'), hhmm('07:00'))).toBe(false)
  })
})

describe('payload', () => {
  const all: Candidate[] = [
    decideRhr(rhr({ steps1: 1000 }), AT).candidate,
    decideZones(zones({}), AT),
    decideZones(zones({ dow: 5, weekDays: 5, wtd: 150, wtdBefore: 100 }), AT),
    decideZones(zones({ dow: 5, weekDays: 5, wtd: 300, wtdBefore: 200 }), AT),
    decideSteps(
      { userId: 'u', today: 'x', todayEnd: 0, age: 40, p60: 5000, validDays: 20, prevGoal: null, yesterday: 1 },
      { mutedRules: [] },
      AT,
    ),
    decideLoadJump(load(), AT),
    decideRecovery(load({ raceYesterday: true }), AT),
    decideMove(
      { userId: 'u', tz: 'UTC', stepsHour: 0, steps50: 0, worn50: 50, hr10: 70, hrRest: 55, hrMax: 185 },
      Date.parse('2026-03-26T14:55:00Z'),
      { activeStart: '09:00', activeEnd: '18:00' },
    ),
  ].filter((c): c is Candidate => c !== null)
  it('every template: no disease name, ends with the disclaimer, the fields of the contract', () => {
    expect(all.map((c) => c.rule).sort()).toEqual([
      'load_jump',
      'move_reminder',
      'recovery_day',
      'rhr_elevated',
      'step_goal',
      'zone_minutes_weekly',
      'zone_minutes_weekly',
      'zone_minutes_weekly',
    ])
    for (const c of all) {
      const p = buildPayload(c)
      expect(p.message.endsWith(DISCLAIMER)).toBe(true)
      for (const w of FORBIDDEN_WORDS) expect(`${p.title} ${p.message}`.toLowerCase()).not.toContain(w)
      expect(Object.keys(p).sort()).toEqual(
        [
          'createdAt',
          'evidence',
          'expiresAt',
          'id',
          'message',
          'priority',
          'purpose',
          'rule',
          'title',
          'version',
        ].sort(),
      )
    }
  })
  it('the id is stable per user, rule and episode', () => {
    expect(recommendationId('a', 'rhr_elevated', '2026-03-26')).toBe(
      recommendationId('a', 'rhr_elevated', '2026-03-26'),
    )
    expect(recommendationId('a', 'rhr_elevated', '2026-03-26')).not.toBe(
      recommendationId('b', 'rhr_elevated', '2026-03-26'),
    )
    expect(recommendationId('a', 'rhr_elevated', '2026-03-26')).not.toBe(
      recommendationId('a', 'rhr_elevated', '2026-03-27'),
    )
  })
})

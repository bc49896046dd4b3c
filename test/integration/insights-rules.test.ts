// Every recommendation rule on synthetic history built to trip it and built not to, through the real SQL (features
// from samples_1m on the embedded TimescaleDB, from samples on PostgreSQL) and the real delivery layer: missing nights,
// coverage below the gates, a zone far from UTC, a DST night, the rhr episode's hysteresis, a second run giving the
// same id, consent, and a recovery day holding back goal nudges. The scheduler's own choice of who is due is tested
// with a clock the test sets.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { InsightsEngine } from '../../src/insights/engine.js'
import type { RuleId } from '../../src/insights/payload.js'
import { createInsightsMetrics } from '../../src/insights/metrics.js'
import { DISCLAIMER } from '../../src/insights/payload.js'
import { type StoreKind, startTestBroker, type TestBroker } from '../helpers/harness.js'
import { type DayPlan, datesBack, grantRecommendations, seedUser, writeDays } from '../helpers/wellness.js'

// Each test writes weeks of per-minute history and runs the real SQL: minutes on a loaded machine.
vi.setConfig({ testTimeout: 300_000 })

const stores: StoreKind[] = ['postgres', 'embedded']
/** Thursday 26 March 2026: yesterday was a Wednesday (the zone-minutes nudge day) */
const D = '2026-03-26'
const AT = new Date(`${D}T08:00:00Z`)

/** Nights only (no day samples): what the resting-HR rule needs, and light enough for the embedded store. */
const NIGHTS_ONLY = { steps: 0, worn: false } as const

/** Baseline nights alternating 52/54 bpm (median 53, MAD 1), 4000 steps, worn all day. */
function baseline(dates: readonly string[], over: Partial<DayPlan> = {}): DayPlan[] {
  return dates.map((date, i) => ({ date, nightHr: i % 2 === 0 ? 52 : 54, steps: 4000, ...over }))
}

describe.each(stores)('recommendation rules on %s', (store) => {
  let tb: TestBroker
  // Weeks of whole-day per-minute history take many minutes on the embedded store on a loaded 2-core machine: there it
  // runs the night-only cases (resting HR across zones, DST and consent: the continuous-aggregate path); PostgreSQL runs
  // everything.
  const full = store === 'postgres' ? it : it.skip
  const run = (userIds: string[], at: Date, rule?: RuleId) =>
    tb.pg.insights.run({ userIds, at, ...(rule ? { rule } : {}) })

  async function user(id: string, days: DayPlan[], opts: { tz?: string; consent?: boolean } = {}) {
    const key = await seedUser(tb.pg.db, id, { tz: opts.tz ?? 'UTC' })
    await writeDays(tb.pg.db, key, opts.tz ?? 'UTC', days)
    if (opts.consent !== false) await grantRecommendations(tb.pg.db, id)
    return key
  }

  beforeAll(async () => {
    // The scheduler stays out of the way (an hour between rounds); the tests run the engine themselves.
    tb = await startTestBroker(store, { insights: { minSamplesPerMinute: 1, tickMs: 3_600_000 } })
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  })

  describe('rhr_elevated', () => {
    full('fires after two elevated nights, says why, and a second run gives the same id', async () => {
      const dates = datesBack(D, 32)
      const days = baseline(dates.slice(0, 30)).concat([
        { date: dates[30] as string, nightHr: 59, steps: 4000 },
        { date: D, nightHr: 58, steps: 4000 },
      ])
      await user('rhr-trip', days)
      const r = await run(['rhr-trip'], AT)
      const rec = r.delivered.find((p) => p.rule === 'rhr_elevated')
      expect(rec).toBeDefined()
      expect(rec?.priority).toBe('recovery')
      expect(rec?.purpose).toBe('recommendations')
      expect(rec?.evidence.baseline).toBe(53)
      expect(rec?.evidence.value).toBe(58)
      expect(rec?.evidence.threshold).toBe('+4 bpm × 2 nights')
      expect(rec?.evidence.coverage).toBeGreaterThan(0.9)
      expect(rec?.message.endsWith(DISCLAIMER)).toBe(true)
      expect(rec?.message).toContain('(59 vs 53)') // mean of 59 and 58, rounded: 58.5 → 59
      // the day's step goal is held back: a recovery message that day suppresses goal nudges
      expect(r.suppressed).toContainEqual({ userId: 'rhr-trip', rule: 'step_goal', reason: 'recovery_day' })
      const again = await run(['rhr-trip'], new Date(AT.getTime() + 600_000))
      expect(again.delivered).toEqual([])
      expect(again.redelivered.map((p) => p.id)).toEqual([rec?.id])
    })

    full('one message per episode; clears after two normal nights; a new episode gets a new id', async () => {
      const dates = datesBack('2026-03-20', 36)
      const nights = [59, 58, 60, 53, 52, 59, 58] // elevated ×3, normal ×2 (clears), elevated ×2 (new episode)
      const days = baseline(dates.slice(0, 29)).concat(
        nights.map((hr, i) => ({ date: dates[29 + i] as string, nightHr: hr, steps: 4000 })),
      )
      await user('rhr-episodes', days)
      const ids: string[] = []
      for (let i = 30; i < 36; i++) {
        const at = new Date(`${dates[i]}T08:00:00Z`)
        const r = await run(['rhr-episodes'], at, 'rhr_elevated')
        ids.push(...r.delivered.map((p) => `${dates[i]}:${p.id}`))
      }
      expect(ids.length).toBe(2)
      expect(ids[0]?.startsWith(`${dates[30]}:`)).toBe(true) // second elevated night
      expect(ids[1]?.startsWith(`${dates[35]}:`)).toBe(true) // second elevated night of the new episode
      expect(ids[0]?.split(':')[1]).not.toBe(ids[1]?.split(':')[1])
    })

    full(
      'does not fire on one elevated night, on a missing night, below the rest-minutes gate, or with < 7 nights',
      async () => {
        const dates = datesBack(D, 32)
        const base = baseline(dates.slice(0, 30))
        await user(
          'rhr-one',
          base.concat([
            { date: dates[30] as string, nightHr: 53, steps: 4000 },
            { date: D, nightHr: 60, steps: 4000 },
          ]),
        )
        await user(
          'rhr-missing',
          base.concat([
            { date: dates[30] as string, nightHr: null, steps: 4000 },
            { date: D, nightHr: 60, steps: 4000 },
          ]),
        )
        // samples from 05:10 only: 110 rest-qualified minutes (< 120): no resting HR those nights
        await user(
          'rhr-gate',
          base.concat([
            { date: dates[30] as string, nightHr: 60, nightFrom: 310, steps: 4000 },
            { date: D, nightHr: 60, nightFrom: 310, steps: 4000 },
          ]),
        )
        await user(
          'rhr-few',
          baseline(dates.slice(25, 30)).concat([
            { date: dates[30] as string, nightHr: 60, steps: 4000 },
            { date: D, nightHr: 60, steps: 4000 },
          ]),
        )
        const r = await run(['rhr-one', 'rhr-missing', 'rhr-gate', 'rhr-few'], AT, 'rhr_elevated')
        expect(r.users).toBe(4)
        expect(r.candidates).toBe(0)
        const gate = await tb.pg.db.query<{ rhr_night: number | null; rest_minutes: number }>(
          `SELECT rhr_night, rest_minutes FROM daily_features WHERE user_id = 'rhr-gate' AND day = $1`,
          [D],
        )
        expect(gate.rows[0]).toEqual({ rhr_night: null, rest_minutes: 110 })
      },
    )

    it('uses the local night far from UTC (Pacific/Auckland, UTC+13)', async () => {
      const tz = 'Pacific/Auckland'
      const dates = datesBack(D, 32)
      await user(
        'rhr-nz',
        baseline(dates.slice(0, 30), NIGHTS_ONLY).concat([
          { date: dates[30] as string, nightHr: 59, ...NIGHTS_ONLY },
          { date: D, nightHr: 59, ...NIGHTS_ONLY },
        ]),
        { tz },
      )
      // 08:00 on the 26th in Auckland is 19:00 UTC on the 25th: a UTC calendar would see neither night yet.
      const r = await run(['rhr-nz'], new Date('2026-03-25T19:00:00Z'), 'rhr_elevated')
      expect(r.delivered.map((p) => p.rule)).toEqual(['rhr_elevated'])
      // and an hour before the local night closed, the last night is still incomplete: nothing yet
      const early = await run(['rhr-nz'], new Date('2026-03-25T17:30:00Z'), 'rhr_elevated')
      expect(early.candidates).toBe(0)
    })

    it('handles the DST night (Europe/Berlin, 29 March 2026: 00:00–07:00 is 6 hours)', async () => {
      const tz = 'Europe/Berlin'
      const last = '2026-03-29'
      const dates = datesBack(last, 32)
      await user(
        'rhr-dst',
        baseline(dates.slice(0, 30), NIGHTS_ONLY).concat([
          { date: dates[30] as string, nightHr: 59, ...NIGHTS_ONLY },
          { date: last, nightHr: 59, ...NIGHTS_ONLY },
        ]),
        { tz },
      )
      const r = await run(['rhr-dst'], new Date('2026-03-29T08:00:00+02:00'), 'rhr_elevated')
      expect(r.delivered.map((p) => p.rule)).toEqual(['rhr_elevated'])
      const f = await tb.pg.db.query<{ night_length: number; day_length: number; night_minutes: number }>(
        `SELECT night_length, day_length, night_minutes FROM daily_features WHERE user_id = 'rhr-dst' AND day = $1`,
        [last],
      )
      expect(f.rows[0]).toEqual({ night_length: 360, day_length: 1380, night_minutes: 360 })
    })

    it('gives nothing to a user without the recommendations consent', async () => {
      const dates = datesBack(D, 32)
      await user(
        'rhr-noconsent',
        baseline(dates.slice(0, 30), NIGHTS_ONLY).concat([
          { date: dates[30] as string, nightHr: 60, ...NIGHTS_ONLY },
          { date: D, nightHr: 60, ...NIGHTS_ONLY },
        ]),
        { consent: false },
      )
      const r = await run(['rhr-noconsent'], AT)
      expect(r.withoutConsent).toEqual(['rhr-noconsent'])
      expect(r.delivered).toEqual([])
      const stored = await tb.pg.db.query(`SELECT 1 FROM daily_features WHERE user_id = 'rhr-noconsent'`)
      expect(stored.rows.length).toBe(0) // not even evaluated
    })
  })

  describe('zone_minutes_weekly', () => {
    // Monday 23 – Wednesday 25 March; zone HR: moderate 118 (≈ 50 % HRR), vigorous 144 (≈ 70 % HRR) for age 36, RHR 53
    const week = ['2026-03-23', '2026-03-24', '2026-03-25']
    const history = datesBack('2026-03-22', 10)
    full('nudges mid-week when on course for < 150, celebrates 150, and is quiet when already past it', async () => {
      await user('zm-low', baseline(history).concat(baseline(week, { workout: { minutes: 10, hr: 118 } })))
      const wk = baseline(week)
      wk[0] = { ...(wk[0] as DayPlan), workout: { minutes: 50, hr: 144 } } // 100
      wk[1] = { ...(wk[1] as DayPlan), workout: { minutes: 10, hr: 118 } } // 110
      wk[2] = { ...(wk[2] as DayPlan), workout: { minutes: 25, hr: 144 } } // 160: passes 150 on Wednesday
      await user('zm-150', baseline(history).concat(wk))
      // 80, 160 (150 passed on Tuesday, celebrated then), 240: nothing new on Thursday morning
      await user('zm-done', baseline(history).concat(baseline(week, { workout: { minutes: 40, hr: 144 } })))
      // two of the three days unworn: below the gate, no nudge
      await user(
        'zm-gap',
        baseline(history).concat([
          { date: week[0] as string, nightHr: 53, steps: 4000, workout: { minutes: 10, hr: 118 } },
          { date: week[1] as string, nightHr: null, steps: 0, worn: false },
          { date: week[2] as string, nightHr: null, steps: 0, worn: false },
        ]),
      )
      const low = await run(['zm-low'], AT, 'zone_minutes_weekly')
      expect(low.delivered.map((p) => [p.title, p.evidence.value])).toEqual([
        ['Zone minutes: halfway through the week', 30],
      ])
      const c150 = await run(['zm-150'], AT, 'zone_minutes_weekly')
      expect(c150.delivered.map((p) => [p.title, p.evidence.value])).toEqual([['150 zone minutes reached', 160]])
      const rest = await run(['zm-done', 'zm-gap'], AT, 'zone_minutes_weekly')
      expect(rest.candidates).toBe(0)
    })
  })

  describe('step_goal', () => {
    full('sets a goal for a user below the target; not for one above it, nor with too few worn days', async () => {
      const dates = datesBack('2026-03-25', 28)
      await user('st-low', baseline(dates))
      await user('st-high', baseline(dates, { steps: 11000 }))
      await user(
        'st-gap',
        dates.map((date, i) =>
          i % 4 === 0 ? { date, nightHr: 53, steps: 4000 } : { date, nightHr: null, steps: 0, worn: false },
        ),
      )
      const r = await run(['st-low', 'st-high', 'st-gap'], AT, 'step_goal')
      expect(r.delivered.map((p) => [p.rule, p.evidence.threshold, p.evidence.baseline])).toEqual([
        ['step_goal', '4000', 4000],
      ])
    })
  })

  describe('load_jump and recovery_day', () => {
    const dates = datesBack('2026-03-25', 36)
    full(
      'load_jump: a week at ~4.5× the usual load after 4 steady weeks; not for steady load, nor with < 28 days',
      async () => {
        await user(
          'ld-jump',
          dates.map((date, i) => ({
            date,
            nightHr: 53,
            steps: 9500,
            workout: { minutes: i >= 29 ? 90 : 20, hr: 144 },
          })),
        )
        await user(
          'ld-steady',
          dates.map((date) => ({ date, nightHr: 53, steps: 9500, workout: { minutes: 20, hr: 144 } })),
        )
        await user(
          'ld-short',
          dates
            .slice(16)
            .map((date, i) => ({ date, nightHr: 53, steps: 9500, workout: { minutes: i >= 13 ? 90 : 20, hr: 144 } })),
        )
        const r = await run(['ld-jump', 'ld-steady', 'ld-short'], AT, 'load_jump')
        expect(r.delivered.map((p) => p.rule)).toEqual(['load_jump'])
        const ratio = r.delivered[0]?.evidence.value ?? 0
        expect(ratio).toBeGreaterThanOrEqual(1.5)
        expect(r.delivered[0]?.message).toContain('your 4-week average')
      },
    )

    full(
      'recovery_day: after a very high load day with the resting HR up; not when the resting HR is normal',
      async () => {
        const steady = (date: string): DayPlan => ({
          date,
          nightHr: 53,
          steps: 9500,
          workout: { minutes: 20, hr: 144 },
        })
        const plan = (rhrToday: number): DayPlan[] =>
          dates
            .map(
              (date, i): DayPlan =>
                i === 35
                  ? { ...steady(date), workout: { minutes: 150, hr: 144 } } // yesterday: 7.5× the usual load
                  : steady(date),
            )
            .concat([{ date: D, nightHr: rhrToday, steps: 0, worn: false }])
        await user('rc-up', plan(56))
        await user('rc-normal', plan(53))
        const r = await run(['rc-up', 'rc-normal'], AT, 'recovery_day')
        expect(r.delivered.map((p) => [p.rule, p.priority])).toEqual([['recovery_day', 'recovery']])
        expect(r.delivered[0]?.message).toContain('3 bpm above your usual')
      },
    )
  })

  describe('move_reminder', () => {
    it('reminds at :52 after 50 still minutes in the active hours; not after steps, not outside the hours', async () => {
      const still = await seedUser(tb.pg.db, 'mv-still')
      const moved = await seedUser(tb.pg.db, 'mv-moved')
      for (const u of ['mv-still', 'mv-moved']) await grantRecommendations(tb.pg.db, u)
      await tb.pg.db.query(
        `INSERT INTO samples (time, device_key, metric, value)
         SELECT t, k, 1, 70 FROM unnest($1::int[]) k, generate_series('2026-03-26T13:55Z'::timestamptz, '2026-03-26T14:51Z', interval '1 minute') t
         UNION ALL SELECT '2026-03-26T14:30Z', $2::int, 3, 300`,
        [[still, moved], moved],
      )
      const r = await run(['mv-still', 'mv-moved'], new Date('2026-03-26T14:52:00Z'), 'move_reminder')
      expect(r.delivered.map((p) => [p.rule, p.expiresAt])).toEqual([['move_reminder', '2026-03-26T14:59:00.000Z']])
      const early = await run(['mv-still'], new Date('2026-03-26T14:40:00Z'), 'move_reminder')
      expect(early.candidates).toBe(0)
    })
  })

  describe('scheduling', () => {
    full('a user is due once their local morning has passed dailyAt, once per local day', async () => {
      const dates = datesBack('2026-03-10', 10)
      await user('sch-ny', baseline(dates), { tz: 'America/New_York' })
      let now = Date.parse('2026-03-10T11:00:00Z') // 07:00 in New York (EDT since 8 March): before 07:30
      const engine = new InsightsEngine({
        db: tb.pg.db,
        timescale: () => tb.pg.timescale,
        consent: await import('../helpers/consent.js').then((m) => m.testConsent(tb.pg.db).consent),
        preferences: tb.pg.preferences,
        publisher: { publish: () => {} },
        metrics: createInsightsMetrics(new (await import('prom-client')).Registry()),
        log: tb.pg.log,
        settings: { ...tb.pg.config.insights, spreadMinutes: 1 },
        now: () => now,
      })
      const evaluated = async () =>
        (
          await tb.pg.db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM daily_features WHERE user_id = 'sch-ny' AND evaluated_at IS NOT NULL`,
          )
        ).rows[0]?.n
      await engine.tick()
      expect(await evaluated()).toBe(0)
      now = Date.parse('2026-03-10T11:31:00Z') // 07:31 local
      await engine.tick()
      expect(await evaluated()).toBe(1)
      const at = await tb.pg.db.query<{ day: string }>(
        `SELECT to_char(day, 'YYYY-MM-DD') AS day FROM daily_features WHERE user_id = 'sch-ny' AND evaluated_at IS NOT NULL`,
      )
      expect(at.rows[0]?.day).toBe('2026-03-10')
      now = Date.parse('2026-03-10T20:00:00Z')
      await engine.tick()
      expect(await evaluated()).toBe(1) // not again the same local day
      await engine.stop()
    })
  })
})

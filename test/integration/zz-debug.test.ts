import { it } from 'vitest'
import { startTestBroker } from '../helpers/harness.js'
import { datesBack, grantRecommendations, seedUser, writeDays } from '../helpers/wellness.js'
it('debug', async () => {
  const tb = await startTestBroker('postgres', { insights: { minSamplesPerMinute: 1, tickMs: 3_600_000 } })
  const week = ['2026-03-23', '2026-03-24', '2026-03-25']
  const k = await seedUser(tb.pg.db, 'zm')
  await writeDays(tb.pg.db, k, 'UTC', datesBack('2026-03-22', 10).concat(week).map((date) => ({ date, nightHr: 53, steps: 4000, workout: { minutes: 10, hr: 118 } })))
  const dates = datesBack('2026-03-25', 36)
  const k2 = await seedUser(tb.pg.db, 'ld')
  await writeDays(tb.pg.db, k2, 'UTC', dates.map((date, i) => ({ date, nightHr: 53, steps: 9500, workout: { minutes: i >= 29 ? 90 : 20, hr: 144 } })))
  await grantRecommendations(tb.pg.db, 'zm'); await grantRecommendations(tb.pg.db, 'ld')
  const r = await tb.pg.insights.run({ userIds: ['zm', 'ld'], at: new Date('2026-03-26T08:00:00Z') })
  console.log(JSON.stringify(r.suppressed), r.delivered.map((p) => p.rule))
  const f = await tb.pg.db.query(`SELECT user_id, day::text, rhr_night, rest_minutes, night_minutes, steps, wear_minutes, moderate_min, vigorous_min, edwards, load, hr_rest_used, hr_max_used, day_complete FROM daily_features ORDER BY user_id, day`)
  console.table(f.rows)
  await tb.stop()
}, 120000)

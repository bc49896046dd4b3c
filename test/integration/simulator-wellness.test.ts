// The wellness simulator with history (`simulate --scenario wellness --history-days 35`) against a real broker on
// PostgreSQL: 35 days of per-minute history with planted conditions, the daily rules at the end of it, and apps
// subscribed over MQTT. Exactly the planted users must get each planted rule (precision = recall = 1), and each of those
// recommendations must reach the user's app.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import { PLANTED_RULES } from '../../simulators/wellness-history.js'
import { startTestBroker, type TestBroker } from '../helpers/harness.js'

describe('simulator: wellness history with planted conditions, on PostgreSQL', () => {
  let tb: TestBroker
  let report: SwarmReport

  beforeAll(async () => {
    // One HR sample a minute in the history; the scheduler stays out of the way (the simulator runs the rules).
    tb = await startTestBroker('postgres', { insights: { minSamplesPerMinute: 1, tickMs: 86_400_000 } })
    report = await runSwarm({
      broker: tb.pg,
      scenario: 'wellness',
      devices: 30,
      durationS: 3,
      rampPerS: 100,
      bridgeShare: 0,
      anomalyShare: 0,
      drainS: 60,
      historyDays: 35,
      plantedShare: 0.3,
      idPrefix: 'wsim',
      progress: false,
    })
  }, 300_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('gives each planted rule to exactly its planted users', () => {
    const w = report.wellness
    expect(w).not.toBeNull()
    if (!w) return
    expect(w.historyDays).toBe(35)
    expect(w.historyRows).toBeGreaterThan(30 * 35 * 1440)
    for (const rule of PLANTED_RULES) {
      const s = w.rules[rule]
      expect(s, rule).toBeDefined()
      if (!s) continue
      expect(s.planted, rule).toBe(3)
      expect({ rule, fp: s.falsePositiveUsers, fn: s.falseNegativeUsers }).toEqual({ rule, fp: [], fn: [] })
      expect(s.precision, rule).toBe(1)
      expect(s.recall, rule).toBe(1)
      expect(s.truePositives + s.falsePositives + s.falseNegatives + s.trueNegatives).toBe(30)
    }
    expect(w.failures).toEqual([])
  })

  it('delivers them live to the apps subscribed to users/{uid}/recommendations', async () => {
    const w = report.wellness
    if (!w) throw new Error('no wellness report')
    expect(report.connections.apps.connected).toBe(30)
    expect(w.appMissing).toBe(0)
    expect(w.appReceived).toBe(9)
    expect(w.latencyMs.count).toBeGreaterThanOrEqual(9)
    // In process, each arrival is also timed from the broker's publish (after the delivery committed).
    expect(w.publishToAppMs?.count).toBe(w.latencyMs.count)
    // The database agrees: the planted rules' rows are the report's true positives.
    const rows = await tb.pg.db.query<{ rule: string; n: number }>(
      `SELECT rule, count(*)::int AS n FROM recommendations WHERE user_id LIKE 'wsim-%' AND rule = ANY($1::text[])
       GROUP BY rule`,
      [[...PLANTED_RULES]],
    )
    expect(Object.fromEntries(rows.rows.map((r) => [r.rule, Number(r.n)]))).toEqual({
      rhr_elevated: 3,
      load_jump: 3,
      step_goal: 3,
    })
  })
})

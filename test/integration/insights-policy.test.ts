// The delivery layer's policy on both stores, with the broker's real consent and preferences services: the daily
// budget in priority order, quiet hours in the user's zone, per-rule cooldowns, expiry and consent, each hold-back
// counted by reason.
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { DEFAULT_COOLDOWNS, Delivery } from '../../src/insights/delivery.js'
import { createInsightsMetrics } from '../../src/insights/metrics.js'
import type { Candidate, Priority, RuleId } from '../../src/insights/payload.js'
import { entry } from '../../src/insights/preferences/crdt.js'
import { PreferencesStore } from '../../src/insights/preferences/store.js'
import { type StoreKind, startTestBroker, type TestBroker } from '../helpers/harness.js'
import { testConsent } from '../helpers/consent.js'
import { grantRecommendations, seedUser } from '../helpers/wellness.js'

vi.setConfig({ testTimeout: 120_000 })
const stores: StoreKind[] = ['postgres', 'embedded']
const DAY = 86_400_000

function candidate(userId: string, rule: RuleId, priority: Priority, at: number, episode: string): Candidate {
  const localDay = new Date(at).toISOString().slice(0, 10)
  return {
    userId,
    rule,
    version: 1,
    priority,
    episode,
    title: rule,
    message: `${rule} message.`,
    evidence: { metric: 'm', value: 1, baseline: null, window: 'w', threshold: 't', coverage: 1 },
    createdAt: at,
    expiresAt: at + 6 * 3600_000,
    localDay,
  }
}

describe.each(stores)('recommendation delivery policy on %s', (store) => {
  let tb: TestBroker
  let registry: Registry
  let delivery: Delivery
  let consent: ReturnType<typeof testConsent>['consent']
  const published: { topic: string; payload: string }[] = []

  beforeAll(async () => {
    tb = await startTestBroker(store, { insights: { tickMs: 3_600_000 } })
    registry = new Registry()
    consent = testConsent(tb.pg.db).consent
    delivery = new Delivery(
      tb.pg.db,
      consent,
      tb.pg.preferences,
      { publish: (topic, payload) => void published.push({ topic, payload: String(payload) }) },
      createInsightsMetrics(registry),
      { dailyBudget: 3, cooldownMs: DEFAULT_COOLDOWNS },
      tb.pg.log,
      () => 'UTC',
    )
    for (const u of ['bu', 'qu', 'co', 'ex', 'nc']) {
      await seedUser(tb.pg.db, u)
      if (u !== 'nc') await grantRecommendations(tb.pg.db, u)
    }
    // qu: quiet 22:00–07:00 in Berlin, set as the user's devices would (the preferences registers)
    const hlc = { wall: Date.now() - 1000, counter: 0, node: 'phone-1' }
    await new PreferencesStore(tb.pg.db).merge(
      'qu',
      new Map([
        ['quietHours', entry({ start: '22:00', end: '07:00' }, hlc)],
        ['timeZone', entry('Europe/Berlin', { ...hlc, counter: 1 })],
      ]),
    )
    await tb.pg.preferences.load(['bu', 'qu', 'co', 'ex', 'nc'])
    await consent.load(['bu', 'qu', 'co', 'ex', 'nc'])
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  })

  const suppressedCount = async (rule: string, reason: string) => {
    const m = (await registry.getSingleMetric('pulsegate_recommendations_suppressed_total')?.get())?.values ?? []
    return m.find((v) => v.labels['rule'] === rule && v.labels['reason'] === reason)?.value ?? 0
  }

  it('spends the daily budget (3) in priority order; the rest is held back as budget', async () => {
    const at = Date.parse('2026-03-26T12:00:00Z')
    const r = await delivery.deliver(
      [
        candidate('bu', 'move_reminder', 'nudge', at, 'h12'),
        candidate('bu', 'zone_minutes_weekly', 'goal', at, 'w:150'),
        candidate('bu', 'step_goal', 'goal', at, 'd'),
        candidate('bu', 'load_jump', 'load', at, 'd'),
        candidate('bu', 'zone_minutes_weekly', 'goal', at, 'w:300'),
      ],
      at,
    )
    expect(r.delivered.map((p) => p.rule)).toEqual(['load_jump', 'step_goal', 'zone_minutes_weekly'])
    expect(r.suppressed.map((s) => [s.rule, s.reason])).toEqual([
      ['zone_minutes_weekly', 'budget'],
      ['move_reminder', 'budget'],
    ])
    // the next local day has a fresh budget
    const next = await delivery.deliver([candidate('bu', 'move_reminder', 'nudge', at + DAY, 'h12b')], at + DAY)
    expect(next.delivered.map((p) => p.rule)).toEqual(['move_reminder'])
    expect(await suppressedCount('move_reminder', 'budget')).toBe(1)
    expect(published.filter((p) => p.topic === 'users/bu/recommendations').length).toBe(4)
  })

  it("holds back during the user's quiet hours in their own zone", async () => {
    // 05:30 UTC = 06:30 in Berlin (CET, before the DST change): quiet; 06:30 UTC = 07:30: not
    const quiet = Date.parse('2026-03-26T05:30:00Z')
    const r = await delivery.deliver([candidate('qu', 'step_goal', 'goal', quiet, 'd1')], quiet)
    expect(r.suppressed).toEqual([{ userId: 'qu', rule: 'step_goal', reason: 'quiet_hours' }])
    const awake = quiet + 3600_000
    const r2 = await delivery.deliver([candidate('qu', 'step_goal', 'goal', awake, 'd1')], awake)
    expect(r2.delivered.map((p) => p.rule)).toEqual(['step_goal'])
  })

  it('keeps per-rule cooldowns (load_jump: 7 days), and drops expired advice', async () => {
    const t0 = Date.parse('2026-03-10T08:00:00Z')
    expect((await delivery.deliver([candidate('co', 'load_jump', 'load', t0, 'a')], t0)).delivered.length).toBe(1)
    const t3 = t0 + 3 * DAY
    expect((await delivery.deliver([candidate('co', 'load_jump', 'load', t3, 'b')], t3)).suppressed).toEqual([
      { userId: 'co', rule: 'load_jump', reason: 'cooldown' },
    ])
    const t8 = t0 + 8 * DAY
    expect((await delivery.deliver([candidate('co', 'load_jump', 'load', t8, 'c')], t8)).delivered.length).toBe(1)
    const late = candidate('ex', 'move_reminder', 'nudge', t0, 'h')
    expect((await delivery.deliver([late], late.expiresAt)).suppressed).toEqual([
      { userId: 'ex', rule: 'move_reminder', reason: 'expired' },
    ])
  })

  it('sends nothing without the recommendations consent, and stores nothing', async () => {
    const at = Date.parse('2026-03-26T12:00:00Z')
    const r = await delivery.deliver([candidate('nc', 'step_goal', 'goal', at, 'd')], at)
    expect(r.suppressed).toEqual([{ userId: 'nc', rule: 'step_goal', reason: 'consent' }])
    const rows = await tb.pg.db.query(`SELECT 1 FROM recommendations WHERE user_id = 'nc'`)
    expect(rows.rows.length).toBe(0)
  })
})

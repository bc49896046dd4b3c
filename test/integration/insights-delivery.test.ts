// Recommendations end to end on both stores: apps over WebSocket with their own tokens. Alice's phone receives her
// rhr_elevated recommendation (and only hers: bob has one too); a second run delivers it again with the same id;
// her watch mutes the rule (users/alice/preferences) and the next run sends nothing and counts the suppression;
// carol, without the recommendations consent, gets nothing; delta sync returns what was sent.
//
// "Nothing arrived" is never a wait: after the run that must send nothing, the test publishes a marker on the same
// topic, and MQTT keeps one publisher's order on one topic to one subscriber, so once the marker is in, anything the
// run had sent would be in too.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { DISCLAIMER, type RecommendationPayload, recommendationId } from '../../src/insights/payload.js'
import {
  connectWithToken,
  type StoreKind,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { type DayPlan, datesBack, grantRecommendations, seedUser, writeDays } from '../helpers/wellness.js'

vi.setConfig({ testTimeout: 240_000 })

const stores: StoreKind[] = ['postgres', 'embedded']
const D = '2026-03-26'
const AT = new Date(`${D}T08:00:00Z`)

/** 9 baseline nights (52/54), then two nights at 60: an rhr_elevated episode starting on D. Nights only. */
function elevated(): DayPlan[] {
  const dates = datesBack(D, 11)
  return dates.map((date, i) => ({
    date,
    nightHr: i >= 9 ? 60 : i % 2 === 0 ? 52 : 54,
    steps: 0,
    worn: false,
  }))
}

type Msg = RecommendationPayload | { marker: string }

function inbox(c: MqttClient, topic: string): Msg[] {
  const got: Msg[] = []
  c.on('message', (t, payload) => {
    if (t === topic) got.push(JSON.parse(payload.toString()) as Msg)
  })
  return got
}

describe.each(stores)('recommendations over WebSocket on %s', (store) => {
  let tb: TestBroker
  const clients: MqttClient[] = []
  let marker = 0

  async function app(userId: string, clientId: string): Promise<MqttClient> {
    const c = await connectWithToken(tb, await token(tb, userId, 'app'), clientId, 'ws')
    clients.push(c)
    return c
  }
  /** Publishes a marker on the user's topic and waits until the inbox has it: everything sent before is in. */
  async function settle(userId: string, got: Msg[]): Promise<void> {
    const m = `m${++marker}`
    tb.pg.publish(`users/${userId}/recommendations`, JSON.stringify({ marker: m }), 1, false)
    await waitFor(() => got.some((x) => 'marker' in x && x.marker === m), 60_000)
  }
  const recs = (got: Msg[]) => got.filter((x): x is RecommendationPayload => 'id' in x)

  beforeAll(async () => {
    tb = await startTestBroker(store, { insights: { minSamplesPerMinute: 1, tickMs: 3_600_000 } })
    for (const u of ['alice', 'bob', 'carol']) {
      const key = await seedUser(tb.pg.db, u)
      await writeDays(tb.pg.db, key, 'UTC', elevated())
    }
    await grantRecommendations(tb.pg.db, 'alice')
    await grantRecommendations(tb.pg.db, 'bob')
  }, 120_000)
  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.endAsync()))
    await tb?.stop()
  })

  it("delivers a user's recommendation to that user's app only, again with the same id, and not once muted", async () => {
    const phone = await app('alice', 'app:alice:phone')
    const bobPhone = await app('bob', 'app:bob:phone')
    const carolPhone = await app('carol', 'app:carol:phone')
    const topic = (u: string) => `users/${u}/recommendations`
    await phone.subscribeAsync(topic('alice'), { qos: 1 })
    await bobPhone.subscribeAsync(topic('bob'), { qos: 1 })
    await carolPhone.subscribeAsync(topic('carol'), { qos: 1 })
    const alice = inbox(phone, topic('alice'))
    const bob = inbox(bobPhone, topic('bob'))
    const carol = inbox(carolPhone, topic('carol'))

    const first = await tb.pg.insights.run({ userIds: ['alice', 'bob', 'carol'], at: AT })
    expect(first.withoutConsent).toEqual(['carol'])
    const aliceId = recommendationId('alice', 'rhr_elevated', D)
    const bobId = recommendationId('bob', 'rhr_elevated', D)
    expect(first.delivered.map((p) => p.id).sort()).toEqual([aliceId, bobId].sort())

    await settle('alice', alice)
    await settle('bob', bob)
    await settle('carol', carol)
    expect(recs(alice).map((p) => [p.id, p.rule])).toEqual([[aliceId, 'rhr_elevated']])
    expect(recs(bob).map((p) => p.id)).toEqual([bobId])
    expect(recs(carol)).toEqual([])
    const rec = recs(alice)[0] as RecommendationPayload
    expect(rec.purpose).toBe('recommendations')
    expect(rec.priority).toBe('recovery')
    expect(rec.message.endsWith(DISCLAIMER)).toBe(true)
    expect(Object.keys(rec.evidence).sort()).toEqual(['baseline', 'coverage', 'metric', 'threshold', 'value', 'window'])

    // A second delivery (an operator re-runs the day): the same id, so the app can drop it.
    const second = await tb.pg.insights.run({ userIds: ['alice'], at: new Date(AT.getTime() + 60_000) })
    expect(second.redelivered.map((p) => p.id)).toEqual([aliceId])
    await settle('alice', alice)
    expect(recs(alice).map((p) => p.id)).toEqual([aliceId, aliceId])

    // Alice's watch mutes the rule; the merged preference reaches the engine before the PUBACK.
    const watch = await app('alice', 'app:alice:watch')
    await watch.publishAsync(
      'users/alice/preferences',
      JSON.stringify({
        node: 'watch-1',
        edits: [{ field: 'mutedRules.rhr_elevated', value: true, hlc: `${Date.now() - 1000}:0:watch-1` }],
      }),
      { qos: 1 },
    )
    expect(tb.pg.preferences.get('alice').mutedRules).toEqual(['rhr_elevated'])
    const third = await tb.pg.insights.run({ userIds: ['alice'], at: new Date(AT.getTime() + 120_000) })
    expect(third.delivered).toEqual([])
    expect(third.redelivered).toEqual([])
    expect(third.suppressed).toContainEqual({ userId: 'alice', rule: 'rhr_elevated', reason: 'muted' })
    await settle('alice', alice)
    expect(recs(alice).map((p) => p.id)).toEqual([aliceId, aliceId])

    const metrics = await (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/metrics`)).text()
    expect(
      metricValue(metrics, 'pulsegate_recommendations_suppressed_total', { rule: 'rhr_elevated', reason: 'muted' }),
    ).toBe(1)

    // Delta sync returns what was delivered, with the same id.
    await phone.subscribeAsync('users/alice/sync/response', { qos: 1 })
    const response = new Promise<{ recommendations: RecommendationPayload[] }>((resolve) => {
      phone.on('message', (t, payload) => {
        if (t === 'users/alice/sync/response') resolve(JSON.parse(payload.toString()))
      })
    })
    await phone.publishAsync('users/alice/sync/request', JSON.stringify({ kinds: ['recommendations'] }), { qos: 1 })
    expect((await response).recommendations.map((p) => p.id)).toEqual([aliceId])
  })
})

// The race-control map's feed on its own: the newest fix per marked runner, per event, split into bounded messages;
// live_sharing asked each tick; privacy zones (the real PrivacyZoneIndex) hold unless an alert of the runner's
// current event is open and its medics get their alerts.
import { describe, expect, it } from 'vitest'
import type { Preferences } from '../../src/insights/preferences/reader.js'
import { createMetrics } from '../../src/metrics.js'
import type { Purpose } from '../../src/ops/consent-model.js'
import { PrivacyZoneIndex } from '../../src/ops/privacy-zones.js'
import type { PositionsMessage } from '../../src/outputs/payloads.js'
import { PositionFeed } from '../../src/outputs/positions.js'
import { blankState, type UserState } from '../../src/outputs/user-state.js'

const T = 1_764_061_200_000
const HOME = { lat: 52.48731, lon: 13.39117 }

function setup(perMessage = 500) {
  const users = new Map<string, UserState>()
  const granted = new Set<string>() // `${userId}:${purpose}`
  const prefs = new Map<string, Preferences>()
  const zones = new PrivacyZoneIndex({
    get: (u) => prefs.get(u) ?? { mutedRules: [] },
    load: async () => {},
    onChange: () => () => {},
  })
  const out: { topic: string; msg: PositionsMessage; qos: number; retain: boolean }[] = []
  const metrics = createMetrics()
  const feed = new PositionFeed(
    users,
    { allows: (u: string, p: Purpose) => granted.has(`${u}:${p}`) },
    zones,
    {
      publish: (topic, payload, qos, retain) =>
        void out.push({ topic, msg: JSON.parse(payload.toString()), qos, retain }),
    },
    metrics,
    perMessage,
  )
  const add = (
    id: string,
    eventId: string,
    at: { lat: number; lon: number },
    purposes: Purpose[] = ['live_sharing'],
  ) => {
    const u = blankState(id, `trk-${id}`)
    u.event = { eventId, consent: true, startsAt: null, courseM: null }
    u.window.pos.push({ t: T - 1000, lat: at.lat - 0.001, lon: at.lon }, { t: T, ...at })
    users.set(id, u)
    for (const p of purposes) granted.add(`${id}:${p}`)
    feed.mark(id)
    return u
  }
  const withheld = async (reason: string) =>
    (await metrics.outputsWithheld.get()).values.find(
      (v) => v.labels.output === 'event_positions' && v.labels.reason === reason,
    )?.value ?? 0
  return { users, prefs, feed, out, add, withheld }
}

describe('PositionFeed', () => {
  it('publishes the newest fix of each marked runner per event, once, QoS 0, not retained', () => {
    const s = setup()
    s.add('a', 'e1', { lat: 52.5, lon: 13.4 })
    s.add('b', 'e2', { lat: 48.1, lon: 11.5 })
    s.feed.publish()
    expect(s.out.map((o) => [o.topic, o.qos, o.retain, o.msg.runners])).toEqual([
      ['events/e1/positions', 0, false, [{ userId: 'a', t: T, lat: 52.5, lon: 13.4, alert: false }]],
      ['events/e2/positions', 0, false, [{ userId: 'b', t: T, lat: 48.1, lon: 11.5, alert: false }]],
    ])
    s.feed.publish() // nothing marked since
    expect(s.out).toHaveLength(2)
  })

  it('leaves out runners without live_sharing, and fixes inside their zones, counting both', async () => {
    const s = setup()
    s.add('shy', 'e1', { lat: 52.5, lon: 13.4 }, [])
    s.prefs.set('home', { mutedRules: [], privacyZones: [{ id: 'home', ...HOME, radiusM: 200 }] })
    s.add('home', 'e1', { lat: HOME.lat + 0.001, lon: HOME.lon }) // ~111 m from the centre
    s.add('seen', 'e1', { lat: 52.6, lon: 13.4 })
    s.feed.publish()
    expect(s.out.flatMap((o) => o.msg.runners.map((r) => r.userId))).toEqual(['seen'])
    expect(await s.withheld('consent')).toBe(1)
    expect(await s.withheld('privacy_zone')).toBe(1)
  })

  it('shows a runner inside their zone while an alert of this event is open and medics get their alerts', () => {
    const s = setup()
    s.prefs.set('r', { mutedRules: [], privacyZones: [{ id: 'home', ...HOME, radiusM: 200 }] })
    const episode = { id: 'x', kind: 'stopped_abnormal', severity: 'critical', openedAt: T, deviceId: 'trk-r' } as const
    const u = s.add('r', 'e1', HOME, ['live_sharing', 'medical_alerts'])
    u.open.set('stopped_abnormal', { ...episode, eventId: null }) // opened outside the race: not the medics'
    s.feed.publish()
    expect(s.out).toHaveLength(0)
    u.open.set('stopped_abnormal', { ...episode, eventId: 'e1' })
    s.feed.mark('r')
    s.feed.publish()
    expect(s.out.map((o) => o.msg.runners)).toEqual([[{ userId: 'r', t: T, ...HOME, alert: true }]])
    // Withdrawn medical_alerts: the medics get no alert, so no position either.
    const v = s.add('v', 'e1', HOME, ['live_sharing'])
    s.prefs.set('v', { mutedRules: [], privacyZones: [{ id: 'home', ...HOME, radiusM: 200 }] })
    v.open.set('stopped_abnormal', { ...episode, eventId: 'e1' })
    s.feed.publish()
    expect(s.out).toHaveLength(1)
  })

  it('splits a big tick into messages of at most perMessage runners', () => {
    const s = setup(3)
    for (let i = 0; i < 7; i++) s.add(`u${i}`, 'e1', { lat: 50 + i * 0.01, lon: 8 })
    s.feed.publish()
    expect(s.out.map((o) => o.msg.runners.length)).toEqual([3, 3, 1])
    expect(new Set(s.out.flatMap((o) => o.msg.runners.map((r) => r.userId))).size).toBe(7)
  })
})

// The topic ACL as users meet it: every SPEC.md topic × every role, allowed and refused, through a real broker.
// Expectations are written out by hand from SPEC.md's topic table, never computed by the code under test.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AclLookups, canPublish, canSubscribe } from '../../src/identity/acl.js'
import type { Principal } from '../../src/identity/principal.js'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  nextMessage,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  subackCode,
  token,
} from '../helpers/harness.js'

type Who = 'device' | 'bridgeAlice' | 'appAlice' | 'appBob' | 'medicRace1' | 'medicOther' | 'admin'
const WHO: readonly Who[] = ['device', 'bridgeAlice', 'appAlice', 'appBob', 'medicRace1', 'medicOther', 'admin']

let tb: TestBroker
let trkA: DeviceCreds
const opened: MqttClient[] = []

/** Connects `who` with a fresh client id (`n` distinguishes token clients; the device's id is fixed by its cert). */
async function connectAs(who: Who, n: string): Promise<MqttClient> {
  let c: MqttClient
  switch (who) {
    case 'device':
      c = await connectDevice(tb, trkA)
      break
    case 'bridgeAlice':
      c = await connectWithToken(tb, await token(tb, 'alice', 'bridge'), `bridge:alice:${n}`)
      break
    case 'appAlice':
      c = await connectWithToken(tb, await token(tb, 'alice', 'app'), `app:alice:${n}`, 'ws-header')
      break
    case 'appBob':
      c = await connectWithToken(tb, await token(tb, 'bob', 'app'), `app:bob:${n}`, 'ws')
      break
    case 'medicRace1':
      c = await connectWithToken(tb, await token(tb, 'm1', 'medic', ['race1']), `medic:m1:${n}`, 'ws-header')
      break
    case 'medicOther':
      c = await connectWithToken(tb, await token(tb, 'm2', 'medic', ['other']), `medic:m2:${n}`)
      break
    case 'admin':
      c = await connectWithToken(tb, await token(tb, 'ops', 'admin'), `admin:ops:${n}`)
      break
  }
  opened.push(c)
  return c
}

beforeAll(async () => {
  tb = await startTestBroker('postgres', { mqttsTokenEnabled: true })
  trkA = await provisionDevice(tb, 'trk-a', 'alice')
  await provisionDevice(tb, 'trk-b', 'bob')
  await tb.pg.registry.createEvent({ eventId: 'race1' })
  await tb.pg.registry.joinEvent('race1', 'alice', { consentLeaderboard: true })
  await tb.pg.registry.createEvent({ eventId: 'open1', isPublic: true })
})

afterAll(async () => {
  await Promise.all(opened.map((c) => c.endAsync(true).catch(() => {})))
  await tb?.stop()
})

// ---------------------------------------------------------------------------------------------------------------
// SUBSCRIBE: topic → the roles that may subscribe to it. Everyone else gets SUBACK 0x80.
const OWNER_APPS: Who[] = ['bridgeAlice', 'appAlice', 'admin']
const SUBSCRIBE_ALLOWED: Record<string, readonly Who[]> = {
  'devices/trk-a/rejections': ['device', 'bridgeAlice', 'appAlice', 'admin'],
  // config is the device's (relayed by its owner's bridge); the owner's app has no use for it
  'devices/trk-a/config': ['device', 'bridgeAlice', 'admin'],
  'devices/trk-b/rejections': ['appBob', 'admin'],
  // inbound topics and firehoses: admin only
  'devices/trk-a/readings': ['admin'],
  'devices/+/readings': ['admin'],
  '#': ['admin'],
  '+/+/readings': ['admin'],
  '$SYS/#': ['admin'],
  'users/alice/alerts': OWNER_APPS,
  'users/alice/live': OWNER_APPS,
  'users/alice/recommendations': OWNER_APPS,
  'users/alice/sync/response': OWNER_APPS,
  'users/bob/alerts': ['appBob', 'admin'],
  'users/alice/sync/request': ['admin'],
  // consent and preferences: the retained state is the user's output; the topic set is an inbound request
  'users/alice/consent/state': OWNER_APPS,
  'users/alice/preferences/state': OWNER_APPS,
  'users/bob/consent/state': ['appBob', 'admin'],
  'users/alice/consent': ['admin'],
  'users/alice/preferences': ['admin'],
  // race1 is private; alice is a participant. SPEC: "participants, medics": the bridge acts for participant alice too
  // (acl.ts treats any token of the user alike here; the brief's per-role summary does not list it — see report).
  'events/race1/leaderboard': ['bridgeAlice', 'appAlice', 'medicRace1', 'admin'],
  'events/race1/alerts': ['medicRace1', 'admin'],
  'events/race1/stats': ['bridgeAlice', 'appAlice', 'medicRace1', 'admin'],
  // the race-control map's feed: medics only, even of a public event (docs/privacy.md "Privacy zones")
  'events/race1/positions': ['medicRace1', 'admin'],
  'events/open1/positions': ['admin'],
  // open1 is public: any user; medics are scoped to their token's events; devices never subscribe to events
  'events/open1/leaderboard': ['bridgeAlice', 'appAlice', 'appBob', 'admin'],
  'foo/bar': ['admin'],
  'users/alice/#': ['admin'],
}

const subscribeCases = Object.entries(SUBSCRIBE_ALLOWED).flatMap(([topic, allowed]) =>
  WHO.map((who) => ({ who, topic, allowed: allowed.includes(who) })),
)

/** The SUBACK return code for one filter (MQTT.js rejects the promise API on 0x80, so use the callback). */
let expectedSubscribeRefusals = 0
let expectedPublishRefusals = 0

describe('subscribe: every SPEC.md topic × every role', () => {
  const clients = new Map<Who, MqttClient>()

  beforeAll(async () => {
    for (const who of WHO) clients.set(who, await connectAs(who, 'sub'))
  })
  afterAll(async () => {
    await Promise.all([...clients.values()].map((c) => c.endAsync()))
  })

  it('covers every role for every topic', () => {
    expect(subscribeCases).toHaveLength(Object.keys(SUBSCRIBE_ALLOWED).length * WHO.length)
  })

  it.each(subscribeCases)('$who subscribing to $topic: allowed=$allowed', async ({ who, topic, allowed }) => {
    const c = clients.get(who)!
    const code = await subackCode(c, topic)
    if (allowed) {
      expect(code).toBe(1)
    } else {
      expectedSubscribeRefusals++
      expect(code).toBe(128)
    }
    // A refused filter costs nothing but the filter: the connection stays.
    expect(c.connected).toBe(true)
    if (allowed) await c.unsubscribeAsync(topic)
  })
})

// ---------------------------------------------------------------------------------------------------------------
// PUBLISH: topic → the roles that may publish to it. A refused QoS 1 publish closes the connection without PUBACK.
const PUBLISH_ALLOWED: Record<string, readonly Who[]> = {
  'devices/trk-a/readings': ['device', 'bridgeAlice', 'admin'],
  'devices/trk-a/status': ['device', 'bridgeAlice', 'admin'],
  'devices/trk-b/readings': ['admin'],
  'devices/trk-a/rejections': ['admin'],
  'users/alice/sync/request': ['bridgeAlice', 'appAlice', 'admin'],
  'users/bob/sync/request': ['appBob', 'admin'],
  // consent and preferences are set from the user's app only (not the bridge, which relays sensor data)
  'users/alice/consent': ['appAlice', 'admin'],
  'users/alice/preferences': ['appAlice', 'admin'],
  'users/bob/consent': ['appBob', 'admin'],
  'users/alice/consent/state': ['admin'],
  'users/alice/preferences/state': ['admin'],
  'users/alice/alerts': ['admin'],
  'users/alice/live': ['admin'],
  'users/alice/sync/response': ['admin'],
  'events/race1/leaderboard': ['admin'],
  'events/race1/alerts': ['admin'],
  'events/race1/stats': ['admin'],
  'events/race1/positions': ['admin'],
  // '$' topics belong to the broker: refused for everyone, admin included
  '$SYS/x': [],
  'foo/bar': ['admin'],
}

const publishCases = Object.entries(PUBLISH_ALLOWED).flatMap(([topic, allowed]) =>
  WHO.map((who) => ({ who, topic, allowed: allowed.includes(who) })),
)

let nextT = Date.now() - 3_600_000
let nextSeq = 1
function payloadFor(topic: string): string {
  if (topic.endsWith('/readings')) return JSON.stringify({ seq: nextSeq++, samples: [{ t: nextT++, hr: 70 }] })
  if (topic.endsWith('/status')) return JSON.stringify({ battery: 80, firmware: '1.2.3', buffered: 0 })
  if (topic.endsWith('/consent')) return JSON.stringify({ purpose: 'research', granted: true })
  return '{}'
}

/** QoS 1 publish; resolves whether a PUBACK came and whether the server closed the connection. */
function publishOutcome(c: MqttClient, topic: string, payload: string): Promise<{ acked: boolean; closed: boolean }> {
  return new Promise((resolve) => {
    let acked = false
    let closed = false
    let timer: NodeJS.Timeout | undefined
    const finish = () => {
      clearTimeout(timer)
      clearTimeout(bound)
      c.off('close', onClose)
      resolve({ acked, closed })
    }
    const onClose = () => {
      closed = true
      // a PUBACK sent just before the close would already have been processed; give it a tick anyway
      setTimeout(finish, 50)
    }
    c.once('close', onClose)
    c.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) return
      acked = true
      // the connection must survive an allowed publish: wait a little for a late close
      timer = setTimeout(finish, 100)
    })
    // neither a PUBACK nor a close: report that (the test fails on it). A bound, not a wait: an allowed readings
    // batch is acked only after its commit, which on a loaded machine can take seconds.
    const bound = setTimeout(finish, 15_000)
  })
}

describe('publish: every SPEC.md topic × every role', () => {
  it.each(publishCases)('$who publishing to $topic: allowed=$allowed', async ({ who, topic, allowed }) => {
    const c = await connectAs(who, `p${nextSeq}-${Date.now()}`)
    const outcome = await publishOutcome(c, topic, payloadFor(topic))
    if (allowed) {
      expect(outcome).toEqual({ acked: true, closed: false })
    } else {
      expectedPublishRefusals++
      expect(outcome).toEqual({ acked: false, closed: true })
    }
    await c.endAsync(true)
  })

  it("the device's own QoS 1 batch is committed when its PUBACK arrives", async () => {
    const c = await connectAs('device', 'commit')
    const t = nextT++
    await c.publishAsync('devices/trk-a/readings', JSON.stringify({ seq: nextSeq++, samples: [{ t, hr: 71 }] }), {
      qos: 1,
    })
    const res = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
       WHERE d.device_id = 'trk-a' AND s.time = to_timestamp($1 / 1000.0)`,
      [t],
    )
    expect(res.rows[0]?.n).toBe(1)
    await c.endAsync()
  })

  it("a bridge's batch for its user's device is stored under that device, one for another user's is not", async () => {
    const before = await tb.pg.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = 'trk-b'",
    )
    const ok = await connectAs('bridgeAlice', 'relay')
    const t = nextT++
    await ok.publishAsync('devices/trk-a/readings', JSON.stringify({ seq: 1, samples: [{ t, hr: 99 }] }), { qos: 1 })
    const stored = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
       WHERE d.device_id = 'trk-a' AND s.time = to_timestamp($1 / 1000.0) AND s.value = 99`,
      [t],
    )
    expect(stored.rows[0]?.n).toBe(1)
    await ok.endAsync()

    const bad = await connectAs('bridgeAlice', 'relay2')
    const outcome = await publishOutcome(
      bad,
      'devices/trk-b/readings',
      JSON.stringify({ seq: 2, samples: [{ t: nextT++, hr: 98 }] }),
    )
    expectedPublishRefusals++
    expect(outcome).toEqual({ acked: false, closed: true })
    const after = await tb.pg.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = 'trk-b'",
    )
    expect(after.rows[0]?.n).toBe(before.rows[0]?.n)
  })
})

describe('admin publishes to outbound device topics', () => {
  // Regression: only readings/status go to the ingest stage; a config must stay retained and never become a status.
  it('a retained config from an admin is kept retained and is not stored as the device status', async () => {
    const admin = await connectAs('admin', 'config')
    const config = { intervalMs: 5000, tag: `cfg-${Date.now()}` }
    await admin.publishAsync('devices/trk-a/config', JSON.stringify(config), { qos: 1, retain: true })
    await admin.endAsync()
    const status = await tb.pg.db.query<{ status: unknown }>(
      "SELECT status FROM device_status s JOIN devices d USING (device_key) WHERE d.device_id = 'trk-a'",
    )
    expect(status.rows[0]?.status).not.toEqual(config)
    const dev = await connectAs('device', 'config')
    // Listening before the SUBSCRIBE: the retained message follows the SUBACK at once. The harness's bound, not 1 s
    // counted from before the subscribe, which a stalled event loop (broker and client share it) can outlast.
    const got = nextMessage(dev, 'devices/trk-a/config')
    await dev.subscribeAsync('devices/trk-a/config', { qos: 1 })
    try {
      expect(JSON.parse((await got).payload.toString())).toEqual(config)
    } finally {
      await dev.endAsync()
    }
  })
})

describe('refusals are counted', () => {
  it('pulsegate_acl_refusals_total counts every refused subscribe and publish', async () => {
    const metric = await tb.pg.metrics.registry.getSingleMetric('pulsegate_acl_refusals_total')!.get()
    const sum = (action: string) =>
      metric.values.filter((v) => v.labels['action'] === action).reduce((n, v) => n + v.value, 0)
    expect(expectedSubscribeRefusals).toBeGreaterThan(0)
    expect(expectedPublishRefusals).toBeGreaterThan(0)
    expect(sum('subscribe')).toBe(expectedSubscribeRefusals)
    expect(sum('publish')).toBe(expectedPublishRefusals)
    // per role: the admin is refused only $-topic publishes
    const adminPublish = metric.values.find((v) => v.labels['action'] === 'publish' && v.labels['role'] === 'admin')
    expect(adminPublish?.value).toBe(1)
    expect(
      metric.values.find((v) => v.labels['action'] === 'subscribe' && v.labels['role'] === 'admin'),
    ).toBeUndefined()
  })
})

// ---------------------------------------------------------------------------------------------------------------
// Unit level: canPublish/canSubscribe with fake look-ups, for the edges of the topic grammar.
describe('token clients over TLS (the token listener, no client certificate) have their ACL', () => {
  it("a bridge over TLS relays its user's device, not another user's, and reads only its user's topics", async () => {
    const c = await connectWithToken(tb, await token(tb, 'alice', 'bridge'), 'bridge:alice:tls', 'tls')
    opened.push(c)
    const t = nextT++
    await c.publishAsync('devices/trk-a/readings', JSON.stringify({ seq: nextSeq++, samples: [{ t, hr: 97 }] }), {
      qos: 1,
    })
    const stored = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
       WHERE d.device_id = 'trk-a' AND s.time = to_timestamp($1 / 1000.0) AND s.value = 97`,
      [t],
    )
    expect(stored.rows[0]?.n).toBe(1)
    expect(await subackCode(c, 'users/alice/alerts')).toBe(1)
    expect(await subackCode(c, 'users/bob/alerts')).toBe(128)
    expect(await subackCode(c, 'devices/+/readings')).toBe(128)
    const outcome = await publishOutcome(c, 'devices/trk-b/readings', payloadFor('devices/trk-b/readings'))
    expect(outcome).toEqual({ acked: false, closed: true })
  })

  it('an app over TLS may not publish readings', async () => {
    const c = await connectWithToken(tb, await token(tb, 'alice', 'app'), 'app:alice:tls', 'tls')
    opened.push(c)
    expect(await subackCode(c, 'users/alice/recommendations')).toBe(1)
    const outcome = await publishOutcome(c, 'devices/trk-a/readings', payloadFor('devices/trk-a/readings'))
    expect(outcome).toEqual({ acked: false, closed: true })
  })
})

describe('acl.ts edge cases (fake look-ups)', () => {
  const owners: Record<string, string> = { 'trk-a': 'alice', 'trk-b': 'bob', [`d${'x'.repeat(63)}`]: 'alice' }
  const lookups: AclLookups = {
    deviceOwner: async (id) => (owners[id] ? { userId: owners[id], deviceKey: 1 } : null),
    isParticipant: async (e, u) => e === 'race1' && u === 'alice',
    eventIsPublic: async (e) => e === 'open1',
  }
  const device = (id: string): Principal => ({
    role: 'device',
    userId: 'alice',
    deviceId: id,
    deviceKey: 1,
    events: [],
  })
  const tokenUser = (role: 'app' | 'bridge' | 'admin', userId: string): Principal => ({
    role,
    userId,
    deviceId: null,
    deviceKey: null,
    events: [],
  })
  const medic = (events: string[]): Principal => ({
    role: 'medic',
    userId: 'm1',
    deviceId: null,
    deviceKey: null,
    events,
  })
  const id64 = `d${'x'.repeat(63)}`
  const id65 = `d${'x'.repeat(64)}`

  const pubCases: [string, Principal, string, boolean][] = [
    ['empty id level', device(''), 'devices//readings', false],
    ['empty id level (bridge)', tokenUser('bridge', 'alice'), 'devices//readings', false],
    ['64-char id', device(id64), `devices/${id64}/readings`, true],
    ['64-char id (bridge of the owner)', tokenUser('bridge', 'alice'), `devices/${id64}/readings`, true],
    ['65-char id', device(id65), `devices/${id65}/readings`, false],
    ['extra level', device('trk-a'), 'devices/trk-a/readings/extra', false],
    ['trailing slash', device('trk-a'), 'devices/trk-a/readings/', false],
    ['leading slash', device('trk-a'), '/devices/trk-a/readings', false],
    ['upper-case root', device('trk-a'), 'Devices/trk-a/readings', false],
    ["'.' in the device id", device('trk.a'), 'devices/trk.a/readings', false],
    ["'.' in the user id", tokenUser('app', 'alice.x'), 'users/alice.x/sync/request', false],
    ['a device publishing its outbound config', device('trk-a'), 'devices/trk-a/config', false],
    ['a device publishing its rejections', device('trk-a'), 'devices/trk-a/rejections', false],
    ['a device publishing a sync request', device('trk-a'), 'users/alice/sync/request', false],
    ['an app publishing its sync response', tokenUser('app', 'alice'), 'users/alice/sync/response', false],
    ['an app publishing sync with a missing level', tokenUser('app', 'alice'), 'users/alice/sync', false],
    ['an app setting its own consent', tokenUser('app', 'alice'), 'users/alice/consent', true],
    ['an app setting its own preferences', tokenUser('app', 'alice'), 'users/alice/preferences', true],
    ["an app setting another user's consent", tokenUser('app', 'bob'), 'users/alice/consent', false],
    ["a bridge setting its user's consent", tokenUser('bridge', 'alice'), 'users/alice/consent', false],
    ["a bridge setting its user's preferences", tokenUser('bridge', 'alice'), 'users/alice/preferences', false],
    ["a device setting its owner's consent", device('trk-a'), 'users/alice/consent', false],
    ['an app publishing its consent state', tokenUser('app', 'alice'), 'users/alice/consent/state', false],
    ['an app publishing its preferences state', tokenUser('app', 'alice'), 'users/alice/preferences/state', false],
    ['consent with an unknown sub-level', tokenUser('app', 'alice'), 'users/alice/consent/request', false],
    ['preferences state with an extra level', tokenUser('app', 'alice'), 'users/alice/preferences/state/x', false],
    ['a bridge publishing for an unregistered device', tokenUser('bridge', 'alice'), 'devices/nobody/readings', false],
    [
      'a bridge publishing a sync request for another user',
      tokenUser('bridge', 'alice'),
      'users/bob/sync/request',
      false,
    ],
    ['a medic publishing to its event', medic(['race1']), 'events/race1/alerts', false],
    ['a medic publishing readings', medic(['race1']), 'devices/trk-a/readings', false],
    ['admin to $SYS', tokenUser('admin', 'ops'), '$SYS/broker/x', false],
    ['admin to $share', tokenUser('admin', 'ops'), '$share/g/users/alice/alerts', false],
    ['admin to a free topic', tokenUser('admin', 'ops'), 'anything/at/all', true],
    ['empty topic', tokenUser('app', 'alice'), '', false],
  ]
  it.each(pubCases)('canPublish: %s', async (_name, p, topic, ok) => {
    expect((await canPublish(p, topic, lookups)).ok).toBe(ok)
  })

  const subCases: [string, Principal, string, boolean][] = [
    ['empty id level', device(''), 'devices//rejections', false],
    ['empty id level (app)', tokenUser('app', 'alice'), 'users//alerts', false],
    ['64-char id', device(id64), `devices/${id64}/config`, true],
    ['65-char id', device(id65), `devices/${id65}/config`, false],
    ['extra level', device('trk-a'), 'devices/trk-a/config/extra', false],
    ["'.' in the device id", device('trk.a'), 'devices/trk.a/config', false],
    ["'.' in the user id", tokenUser('app', 'alice.x'), 'users/alice.x/alerts', false],
    ['$share of own topic', tokenUser('app', 'alice'), '$share/g/users/alice/alerts', false],
    ['$share by a device', device('trk-a'), '$share/g/devices/trk-a/config', false],
    ['$share by admin', tokenUser('admin', 'ops'), '$share/g/users/alice/alerts', true],
    ['single-level wildcard for own user', tokenUser('app', 'alice'), 'users/alice/+', false],
    ['wildcard inside a level', tokenUser('app', 'alice'), 'users/al+ce/alerts', false],
    ['own device readings', device('trk-a'), 'devices/trk-a/readings', false],
    ['own device status', tokenUser('app', 'alice'), 'devices/trk-a/status', false],
    ['own sync request', tokenUser('app', 'alice'), 'users/alice/sync/request', false],
    ['own sync response', tokenUser('app', 'alice'), 'users/alice/sync/response', true],
    ['own consent state', tokenUser('app', 'alice'), 'users/alice/consent/state', true],
    ['own preferences state (bridge)', tokenUser('bridge', 'alice'), 'users/alice/preferences/state', true],
    ['own consent topic', tokenUser('app', 'alice'), 'users/alice/consent', false],
    ['own preferences topic', tokenUser('app', 'alice'), 'users/alice/preferences', false],
    ["another user's consent state", tokenUser('app', 'bob'), 'users/alice/consent/state', false],
    ['medic on a consent state', medic(['race1']), 'users/alice/consent/state', false],
    ["device on its owner's consent state", device('trk-a'), 'users/alice/consent/state', false],
    ['participant app on event alerts', tokenUser('app', 'alice'), 'events/race1/alerts', false],
    ['participant app on event leaderboard', tokenUser('app', 'alice'), 'events/race1/leaderboard', true],
    ['non-participant on a private event', tokenUser('app', 'bob'), 'events/race1/stats', false],
    ['non-participant on a public event', tokenUser('app', 'bob'), 'events/open1/stats', true],
    ['unknown event', tokenUser('app', 'bob'), 'events/nope/leaderboard', false],
    ['device on a public event', device('trk-a'), 'events/open1/leaderboard', false],
    ['medic on its event alerts', medic(['race1']), 'events/race1/alerts', true],
    ['medic on a public event outside its token', medic(['race1']), 'events/open1/leaderboard', false],
    ['medic with no events', medic([]), 'events/race1/stats', false],
    ['medic on a user topic', medic(['race1']), 'users/alice/alerts', false],
    ["app on another user's device config", tokenUser('app', 'bob'), 'devices/trk-a/config', false],
    ['bridge on its device config', tokenUser('bridge', 'alice'), 'devices/trk-a/config', true],
    ['bridge on an unregistered device', tokenUser('bridge', 'alice'), 'devices/nobody/rejections', false],
  ]
  it.each(subCases)('canSubscribe: %s', async (_name, p, topic, ok) => {
    expect((await canSubscribe(p, topic, lookups)).ok).toBe(ok)
  })

  it('a refusal names its reason', async () => {
    expect(await canPublish(device('trk-a'), '$SYS/x', lookups)).toEqual({ ok: false, reason: 'reserved_topic' })
    expect(await canSubscribe(tokenUser('app', 'alice'), 'users/alice/#', lookups)).toEqual({
      ok: false,
      reason: 'wildcard',
    })
    expect(await canPublish(tokenUser('bridge', 'alice'), 'users/alice/consent', lookups)).toEqual({
      ok: false,
      reason: 'app_only_topic',
    })
    expect(await canSubscribe(tokenUser('app', 'alice'), 'devices//rejections', lookups)).toEqual({
      ok: false,
      reason: 'unknown_topic',
    })
  })
})

// Preferences synced across a user's devices, end to end on both stores: a phone and a watch (separate MQTT clients
// over WebSocket, each with its own HLC) edit offline at once and then publish their edits reordered and duplicated;
// both end with the same retained state, the per-field last-writer-wins result worked out below by hand. A device
// connecting later gets it retained, a restart keeps it, other users cannot touch it, bad messages are refused with
// a reason and counted, and a clock far ahead cannot win a field.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { PreferencesStateMessage } from '../../src/insights/preferences/crdt.js'
import { formatHlc, HlcClock } from '../../src/insights/preferences/hlc.js'
import type { PreferencesRefusal } from '../../src/insights/preferences/service.js'
import {
  connectWithToken,
  createTestDatabase,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  subackCode,
  token,
  waitFor,
} from '../helpers/harness.js'

const stores: StoreKind[] = ['postgres', 'embedded']
const STATE = 'users/alice/preferences/state'
const EDITS = 'users/alice/preferences'

interface Received {
  states: PreferencesStateMessage[]
  refusals: PreferencesRefusal[]
  /** the retain flag of each state message, in order */
  retained: boolean[]
}

function collect(c: MqttClient): Received {
  const r: Received = { states: [], refusals: [], retained: [] }
  c.on('message', (topic, payload, packet) => {
    // An empty payload clears the retained state (erasure): no state, nothing to parse.
    if (topic !== STATE || payload.length === 0) return
    const m = JSON.parse(payload.toString()) as PreferencesStateMessage | PreferencesRefusal
    if ('error' in m) r.refusals.push(m)
    else {
      r.states.push(m)
      r.retained.push(packet.retain)
    }
  })
  return r
}

/** A device of alice's: its own HLC on a physical clock the test sets, so every stamp below is known. */
class Device {
  pt: number
  readonly clock: HlcClock
  constructor(
    readonly node: string,
    t0: number,
  ) {
    this.pt = t0
    this.clock = new HlcClock(node, () => this.pt)
  }
  /** An edit made at physical time t (offline: only stamped, sent later). */
  edit(t: number, field: string, value: unknown) {
    this.pt = t
    return { field, value, hlc: formatHlc(this.clock.now()) }
  }
  message(...edits: { field: string; value: unknown; hlc: string }[]): string {
    return JSON.stringify({ node: this.node, edits })
  }
}

// Series carry the node label too (metrics.registry default label), hence `[,}]` after the last label matched.
async function metric(tb: TestBroker, line: RegExp): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/metrics`)).text()
  const m = text.split('\n').find((l) => line.test(l))
  return m ? Number(m.split(' ').pop()) : 0
}

describe.each(stores)('preferences on %s', (store) => {
  let tb: TestBroker
  let database: { url: string; drop(): Promise<void> } | null = null
  const opened: MqttClient[] = []
  // In the past, so no stamp is ahead of the server; 1 ms steps so equal walls are easy to set up.
  const T0 = Date.now() - 60_000
  const phone = new Device('phone-1', T0)
  const watch = new Device('watch-1', T0)

  // Offline on both devices at once. Physical times are offsets from T0; the HLC stamps follow from them.
  const m1 = phone.message(
    phone.edit(T0 + 100, 'mutedRules.R8', true), //                   T0+100:0:phone-1
    phone.edit(T0 + 100, 'quietHours', { start: '22:00', end: '07:00' }), // T0+100:1:phone-1
  )
  const m2 = phone.message(
    phone.edit(T0 + 200, 'goals.steps', 8000), //                     T0+200:0:phone-1
    phone.edit(T0 + 250, 'timeZone', 'Europe/Berlin'), //             T0+250:0:phone-1
  )
  const m3 = phone.message(
    phone.edit(T0 + 260, 'mutedRules.R6', true), //                   T0+260:0:phone-1
    // The phone's physical clock jumps back 170 ms: its HLC does not (T0+260:1).
    phone.edit(T0 + 90, 'mutedRules.R3', true), //                    T0+260:1:phone-1
  )
  const n1 = watch.message(watch.edit(T0 + 150, 'quietHours', { end: '06:30', start: '23:00' })) // T0+150:0:watch-1
  const n2 = watch.message(watch.edit(T0 + 200, 'goals.steps', 10_000)) //  T0+200:0:watch-1: same wall and counter
  const n3 = watch.message(
    watch.edit(T0 + 300, 'mutedRules.R8', false), //                  T0+300:0:watch-1
    watch.edit(T0 + 320, 'mutedRules.R3', false), //                  T0+320:0:watch-1
  )
  // Per field, the greatest stamp: quietHours the watch's (150 > 100); goals.steps the watch's (equal wall and
  // counter, and 'watch-1' > 'phone-1'); timeZone and R6 only the phone set; R8 and R3 the watch unmuted later. The
  // phone muting R6 and the watch unmuting R8 both survive: each rule is its own register.
  const expected: PreferencesStateMessage = {
    userId: 'alice',
    state: {
      'goals.steps': 10_000,
      'mutedRules.R3': false,
      'mutedRules.R6': true,
      'mutedRules.R8': false,
      quietHours: { start: '23:00', end: '06:30' },
      timeZone: 'Europe/Berlin',
    },
    clock: {
      'goals.steps': `${T0 + 200}:0:watch-1`,
      'mutedRules.R3': `${T0 + 320}:0:watch-1`,
      'mutedRules.R6': `${T0 + 260}:0:phone-1`,
      'mutedRules.R8': `${T0 + 300}:0:watch-1`,
      quietHours: `${T0 + 150}:0:watch-1`,
      timeZone: `${T0 + 250}:0:phone-1`,
    },
  }
  const expectedPrefs = {
    quietHours: { start: '23:00', end: '06:30' },
    timeZone: 'Europe/Berlin',
    mutedRules: ['R6'],
    goals: { steps: 10_000 },
  }

  const app = async (clientId: string, user = 'alice') => {
    const c = await connectWithToken(tb, await token(tb, user, 'app'), clientId, 'ws-header')
    opened.push(c)
    return c
  }

  beforeAll(async () => {
    // A database of our own on PostgreSQL, so the restart below can start a second broker on it.
    database = store === 'postgres' ? await createTestDatabase() : null
    tb = await startTestBroker(store, {}, database ? { dbUrl: database.url } : undefined)
  }, 120_000)
  afterAll(async () => {
    await Promise.all(opened.map((c) => c.endAsync(true).catch(() => {})))
    await tb?.stop()
    await database?.drop()
  })

  it('phone and watch edit concurrently, reordered and duplicated: both get the same retained LWW state', async () => {
    const [p, w] = [await app('app:alice:phone'), await app('app:alice:watch')]
    const [fromP, fromW] = [collect(p), collect(w)]
    expect(await subackCode(p, STATE)).toBe(1)
    expect(await subackCode(w, STATE)).toBe(1)
    // Nothing stored yet: the subscription still gets a (retained) empty state.
    await waitFor(() => fromP.states.length > 0 && fromW.states.length > 0)
    expect(fromP.states[0]).toEqual({ userId: 'alice', state: {}, clock: {} })

    // Both come back online at once; each sends its messages out of order, some twice, all in flight together.
    await Promise.all([
      ...[m3, m1, m3, m2, m1].map((m) => p.publishAsync(EDITS, m, { qos: 1 })),
      ...[n3, n2, n1, n3].map((m) => w.publishAsync(EDITS, m, { qos: 1 })),
    ])
    // The PUBACK means merged and stored: the reader and the database have it already.
    expect(tb.pg.preferences.get('alice')).toEqual(expectedPrefs)
    const rows = await tb.pg.db.query<{ field: string; value: unknown; hlc: string }>(
      `SELECT field, value, wall::text || ':' || counter || ':' || node AS hlc FROM user_preferences
       WHERE user_id = 'alice' ORDER BY field`,
    )
    expect(Object.fromEntries(rows.rows.map((r) => [r.field, r.hlc]))).toEqual(expected.clock)
    expect(Object.fromEntries(rows.rows.map((r) => [r.field, r.value]))).toEqual(expected.state)

    await waitFor(() => JSON.stringify(fromP.states.at(-1)) === JSON.stringify(expected))
    await waitFor(() => JSON.stringify(fromW.states.at(-1)) === JSON.stringify(expected))
    // 16 edits delivered: 6 won their field at some point, the rest were duplicates or older than the stored one.
    const applied = await metric(tb, /^pulsegate_preferences_edits_total\{outcome="applied"[,}]/)
    const stale = await metric(tb, /^pulsegate_preferences_edits_total\{outcome="stale"[,}]/)
    expect(applied + stale).toBe(16)
    expect(stale).toBeGreaterThanOrEqual(6)

    // A late replay of the phone's first message changes nothing and publishes nothing new.
    const before = fromP.states.length
    await p.publishAsync(EDITS, m1, { qos: 1 })
    expect(tb.pg.preferences.get('alice')).toEqual(expectedPrefs)
    expect(await metric(tb, /^pulsegate_preferences_edits_total\{outcome="stale"[,}]/)).toBe(stale + 2)
    // An edit after that does go out, to both, and both still agree.
    const n4 = watch.message(watch.edit(T0 + 400, 'goals.steps', 12_000))
    await w.publishAsync(EDITS, n4, { qos: 1 })
    const next = { ...expected, state: { ...expected.state, 'goals.steps': 12_000 } }
    next.clock = { ...expected.clock, 'goals.steps': `${T0 + 400}:0:watch-1` }
    await waitFor(() => JSON.stringify(fromP.states.at(-1)) === JSON.stringify(next))
    await waitFor(() => JSON.stringify(fromW.states.at(-1)) === JSON.stringify(next))
    expect(fromP.states.length).toBe(before + 1)
    // Put goals.steps back where the rest of this suite expects it (a newer stamp, the old value).
    await w.publishAsync(EDITS, watch.message(watch.edit(T0 + 500, 'goals.steps', 10_000)), { qos: 1 })
    expected.clock['goals.steps'] = `${T0 + 500}:0:watch-1`
    await waitFor(() => JSON.stringify(fromW.states.at(-1)) === JSON.stringify(expected))
  })

  it('a device connecting later gets the merged state as a retained message', async () => {
    const web = await app('app:alice:web')
    const got = collect(web)
    expect(await subackCode(web, STATE)).toBe(1)
    await waitFor(() => got.states.length > 0)
    expect(got.states[0]).toEqual(expected)
    expect(got.retained[0]).toBe(true)
  })

  it("another user's app can neither subscribe to nor publish alice's preferences", async () => {
    const mallory = await app('app:mallory', 'mallory')
    expect(await subackCode(mallory, STATE)).toBe(128)
    expect(await subackCode(mallory, EDITS)).toBe(128)
    const refusalsBefore = await metric(tb, /^pulsegate_acl_refusals_total\{action="publish",role="app"[,}]/)
    const closed = new Promise<void>((resolve) => mallory.once('close', () => resolve()))
    mallory.publish(
      EDITS,
      new Device('evil', Date.now()).message({ field: 'timeZone', value: 'UTC', hlc: `${Date.now()}:0:evil` }),
      { qos: 1 },
    )
    await closed // a refused publish closes the connection (MQTT 3.1.1 has no negative PUBACK)
    expect(await metric(tb, /^pulsegate_acl_refusals_total\{action="publish",role="app"[,}]/)).toBe(refusalsBefore + 1)
    expect(tb.pg.preferences.get('alice')).toEqual(expectedPrefs)
    // Nor can the owner's app subscribe to the inbound topic.
    const own = await app('app:alice:curious')
    expect(await subackCode(own, EDITS)).toBe(128)
  })

  it('a bad message is acked, answered with the reason, counted, and stores nothing; the connection stays', async () => {
    const p = await app('app:alice:phone2')
    const got = collect(p)
    expect(await subackCode(p, STATE)).toBe(1)
    await p.publishAsync(EDITS, 'not json', { qos: 1 })
    await p.publishAsync(EDITS, phone.message(phone.edit(T0 + 600, 'timeZone', 'Mars/Olympus_Mons')), { qos: 1 })
    await waitFor(() => got.refusals.length >= 2)
    expect(got.refusals[0]).toMatchObject({ userId: 'alice', error: 'bad_payload', node: null })
    expect(got.refusals[0]?.detail).toMatch(/not JSON/)
    expect(got.refusals[1]).toMatchObject({ error: 'bad_payload', node: 'phone-1' })
    expect(got.refusals[1]?.detail).toMatch(/not an IANA time zone: "Mars\/Olympus_Mons"/)
    expect(await metric(tb, /^pulsegate_preferences_refused_total\{reason="bad_payload"[,}]/)).toBe(2)
    expect(p.connected).toBe(true)
    expect(tb.pg.preferences.get('alice')).toEqual(expectedPrefs)
    expect(got.states.at(-1)).toEqual(expected)
  })

  it('an edit stamped far in the future is refused and counted, so a wrong clock cannot pin a field', async () => {
    const p = await app('app:alice:phone3')
    const got = collect(p)
    expect(await subackCode(p, STATE)).toBe(1)
    const future = new Device('broken-watch', Date.now() + 2 * 3600_000)
    await p.publishAsync(EDITS, future.message(future.edit(future.pt, 'timeZone', 'Asia/Tokyo')), { qos: 1 })
    await waitFor(() => got.refusals.length >= 1)
    expect(got.refusals[0]).toMatchObject({ error: 'clock_ahead', node: 'broken-watch' })
    expect(got.refusals[0]?.detail).toMatch(/ms ahead of the server \(limit 3600000 ms\)/)
    expect(await metric(tb, /^pulsegate_preferences_refused_total\{reason="clock_ahead"[,}]/)).toBe(1)
    expect(tb.pg.preferences.get('alice').timeZone).toBe('Europe/Berlin')
    const r = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_preferences WHERE node = 'broken-watch'`,
    )
    expect(r.rows[0]?.n).toBe(0)
  })

  it('survives a restart on the same store: retained again for new subscribers, merging continues', async () => {
    await Promise.all(opened.splice(0).map((c) => c.endAsync(true).catch(() => {})))
    const dataDir = tb.dataDir
    await tb.stop()
    tb = await startTestBroker(store, {}, { dataDir, ...(database ? { dbUrl: database.url } : {}) })
    // A fresh process knows nothing until it loads; the bulk load reads it back.
    expect(tb.pg.preferences.get('alice')).toEqual({ mutedRules: [] })
    await tb.pg.preferences.load(['alice', 'nobody'])
    expect(tb.pg.preferences.get('alice')).toEqual(expectedPrefs)
    expect(tb.pg.preferences.get('nobody')).toEqual({ mutedRules: [] })

    const w = await app('app:alice:watch')
    const got = collect(w)
    expect(await subackCode(w, STATE)).toBe(1)
    await waitFor(() => got.states.length > 0)
    expect(got.states[0]).toEqual(expected)
    expect(got.retained[0]).toBe(true)
    // A tablet, offline all along, mutes R8 again with a stamp older than the watch's unmute: it loses.
    const tablet = new Device('tablet-1', T0)
    await w.publishAsync(EDITS, tablet.message(tablet.edit(T0 + 290, 'mutedRules.R8', true)), { qos: 1 })
    expect(tb.pg.preferences.get('alice').mutedRules).toEqual(['R6'])
    // Now later than everything: it wins, and the recommendation engine's reader sees R8 muted before the PUBACK.
    await w.publishAsync(EDITS, tablet.message(tablet.edit(T0 + 700, 'mutedRules.R8', true)), { qos: 1 })
    expect(tb.pg.preferences.get('alice').mutedRules).toEqual(['R6', 'R8'])
    await waitFor(() => got.states.at(-1)?.state['mutedRules.R8'] === true)
  })

  it('erasure removes the rows, the cached preferences and the retained state', async () => {
    await tb.pg.preferences.erase('alice')
    expect(tb.pg.preferences.get('alice')).toEqual({ mutedRules: [] })
    const r = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_preferences WHERE user_id = 'alice'`,
    )
    expect(r.rows[0]?.n).toBe(0)
    await tb.pg.preferences.load(['alice'])
    expect(tb.pg.preferences.get('alice')).toEqual({ mutedRules: [] })
    const late = await app('app:alice:late')
    const got = collect(late)
    expect(await subackCode(late, STATE)).toBe(1)
    await waitFor(() => got.states.length > 0)
    expect(got.states).toEqual([{ userId: 'alice', state: {}, clock: {} }])
  })
})

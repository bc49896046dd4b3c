// Privacy zones end to end, on both stores, with real trackers (mTLS), a real app, a real medic and an admin tapping
// the runners' live topics: a fix inside the runner's zone is committed but reaches nobody else (race-control map,
// leaderboard, live, medics' alerts) while one outside does; a zone set from the app over MQTT holds from the next
// reading on; medics see a runner inside their zone while an alert of theirs is open; erasure takes the zones too.
// Nothing waits for time: every step waits for a condition, and "not published" is checked once a later message on
// the same connection proves the earlier ones have all arrived (one publisher, one subscriber: MQTT keeps the order).
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { exportUser } from '../../src/ops/export.js'
import { haversineMeters } from '../../src/pipeline/validate-speed.js'
import { runCli } from '../helpers/cli.js'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  type StoreKind,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { collector } from '../helpers/portability-fixture.js'

interface Received {
  client: 'medic' | 'tap'
  topic: string
  body: unknown
}

/** Every (lat, lon) pair anywhere in a message (alert evidence, map entries, any future field), with its owner. */
function points(body: unknown, owner: string | null = null): { lat: number; lon: number; userId: string | null }[] {
  if (body === null || typeof body !== 'object') return []
  const o = body as Record<string, unknown>
  const who = typeof o.userId === 'string' ? o.userId : owner
  const out: { lat: number; lon: number; userId: string | null }[] = []
  if (typeof o.lat === 'number' && typeof o.lon === 'number') out.push({ lat: o.lat, lon: o.lon, userId: who })
  for (const v of Object.values(o)) out.push(...points(v, who))
  return out
}

const near = (p: { lat: number; lon: number }, c: { lat: number; lon: number }, m: number) =>
  haversineMeters(p.lat, p.lon, c.lat, c.lon) <= m

describe.each(['postgres', 'embedded'] as StoreKind[])('privacy zones (%s)', (store) => {
  const EVENT = `zones-${store}`
  const received: Received[] = []
  let tb: TestBroker
  let medic: MqttClient
  let tap: MqttClient
  const env: Record<string, string | undefined> = {}

  async function rpc(body: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    const json = (await res.json()) as Record<string, unknown>
    if (!res.ok) throw new Error(`rpc ${JSON.stringify(body)}: ${res.status} ${JSON.stringify(json)}`)
    return json
  }

  /** pulsegate_outputs_withheld_total for one output and reason, as /metrics shows it */
  async function withheld(output: string, reason: string): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/metrics`)).text()
    const line = text
      .split('\n')
      .find(
        (l) =>
          l.startsWith('pulsegate_outputs_withheld_total{') &&
          l.includes(`output="${output}"`) &&
          l.includes(`reason="${reason}"`),
      )
    return line ? Number(line.split(' ').pop()) : 0
  }

  /** A runner in the race: user, tracker, live_sharing and medical_alerts granted, on the leaderboard. */
  async function runner(userId: string): Promise<{ dev: DeviceCreds; tracker: MqttClient }> {
    await rpc({ op: 'ensureUser', userId, birthYear: 1985 })
    await rpc({ op: 'joinEvent', eventId: EVENT, userId, consentLeaderboard: true })
    await rpc({ op: 'setConsent', userId, purpose: 'live_sharing', granted: true })
    await rpc({ op: 'setConsent', userId, purpose: 'medical_alerts', granted: true })
    const dev = await provisionDevice(tb, `trk-${userId}`, userId)
    await tap.subscribeAsync(`users/${userId}/live`, { qos: 0 })
    return { dev, tracker: await connectDevice(tb, dev) }
  }

  let seq = 0
  /** Publishes a batch and resolves on its PUBACK: the samples are committed then. */
  async function send(t: { tracker: MqttClient; dev: DeviceCreds }, samples: Record<string, number>[]): Promise<void> {
    seq++
    await t.tracker.publishAsync(`devices/${t.dev.deviceId}/readings`, JSON.stringify({ seq, samples }), { qos: 1 })
  }

  /** A run from `from`, `n` fixes 5 s apart heading north at ~2 m/s, HR 150 with each. */
  function run(from: { lat: number; lon: number }, t0: number, n: number, hr = true): Record<string, number>[] {
    const out: Record<string, number>[] = []
    for (let i = 0; i < n; i++) {
      const t = t0 + i * 5000
      out.push({ t, lat: from.lat + i * 0.00009, lon: from.lon, acc: 5 })
      if (hr) out.push({ t, hr: 150 })
    }
    return out
  }

  const mapHas = (userId: string, pred: (p: { lat: number; lon: number; alert: boolean }) => boolean) =>
    received.some(
      (m) =>
        m.topic === `events/${EVENT}/positions` &&
        (m.body as { runners: { userId: string; lat: number; lon: number; alert: boolean }[] }).runners.some(
          (r) => r.userId === userId && pred(r),
        ),
    )

  beforeAll(async () => {
    tb = await startTestBroker(store)
    await rpc({
      op: 'createEvent',
      eventId: EVENT,
      distanceM: 10_000,
      startsAt: new Date(Date.now() - 3600_000).toISOString(),
    })
    medic = await connectWithToken(tb, await token(tb, 'medic-1', 'medic', [EVENT]), 'medic:medic-1:console', 'ws')
    medic.on('message', (topic, p) => received.push({ client: 'medic', topic, body: JSON.parse(p.toString()) }))
    await medic.subscribeAsync([`events/${EVENT}/positions`, `events/${EVENT}/alerts`, `events/${EVENT}/leaderboard`], {
      qos: 1,
    })
    tap = await connectWithToken(tb, await token(tb, 'ops', 'admin'), 'admin:ops:tap')
    tap.on('message', (topic, p) => {
      if (p.length > 0) received.push({ client: 'tap', topic, body: JSON.parse(p.toString()) })
    })
    Object.assign(env, {
      PULSEGATE_DATA_DIR: tb.dataDir,
      PULSEGATE_DATABASE_URL: tb.dbUrl ?? undefined,
      PULSEGATE_JWT_SECRET: 'test-secret-0123456789abcdef',
      PULSEGATE_LOG_LEVEL: 'silent',
    })
  }, 120_000)
  afterAll(async () => {
    await medic?.endAsync(true)
    await tap?.endAsync(true)
    await tb?.stop()
  })

  async function cli(...args: string[]) {
    const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]))
    for (const [k, v] of Object.entries(env)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
    try {
      return await runCli(...args)
    } finally {
      for (const [k, v] of Object.entries(before)) {
        if (v === undefined) delete process.env[k]
        else process.env[k] = v
      }
    }
  }

  it('a fix inside the home zone is stored but published to no one else; outside it is on the map', async () => {
    const A = `runner-a-${store}`
    const home = { lat: 52.48731, lon: 13.39117 }
    const r = await runner(A)
    const set = await rpc({ op: 'setZone', userId: A, zoneId: 'home', ...home, radiusM: 200, label: 'Home' })
    expect(set.zones).toEqual([{ id: 'home', ...home, radiusM: 200, label: 'Home' }])
    const before = await withheld('event_positions', 'privacy_zone')

    // Ten fixes from 36 m south of the centre to 45 m north of it, all inside.
    const t0 = Date.now() - 200_000
    const inside = run({ lat: home.lat - 0.00032, lon: home.lon }, t0, 10)
    await send(r, inside)
    const stored = await tb.pg.db.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM positions p JOIN devices d USING (device_key) WHERE d.device_id = $1',
      [r.dev.deviceId],
    )
    expect(stored.rows[0]?.n).toBe(10) // committed before the PUBACK
    // The map's tick looked at the newest fix and left it out (counted), and the distance still counts.
    await waitFor(async () => (await withheld('event_positions', 'privacy_zone')) > before, 20_000)
    await waitFor(
      () =>
        received.some(
          (m) =>
            m.topic === `events/${EVENT}/leaderboard` &&
            (m.body as { top: { userId: string; distanceM: number }[] }).top.some(
              (e) => e.userId === A && e.distanceM > 50,
            ),
        ),
      20_000,
    )

    // 500 m north a minute later: outside, on the map; and the admin's tap on live has caught up past it.
    const tOut = t0 + 9 * 5000 + 60_000
    const out = { lat: home.lat + 0.0045, lon: home.lon }
    await send(r, [
      { t: tOut, ...out, acc: 5 },
      { t: tOut, hr: 150 },
    ])
    await waitFor(() => mapHas(A, (p) => near(p, out, 1)), 20_000)
    await waitFor(
      () => received.some((m) => m.topic === `users/${A}/live` && (m.body as { t: number }).t >= tOut),
      20_000,
    )
    const seen = received.flatMap((m) => points(m.body).map((p) => ({ ...p, topic: m.topic })))
    expect(seen.filter((p) => near(p, home, 200))).toEqual([])
    expect(seen.some((p) => p.userId === A && near(p, out, 1))).toBe(true)
    // Live and leaderboard carry no coordinates at all, only distance and pace.
    expect(
      received
        .filter((m) => m.topic === `users/${A}/live` || m.topic.endsWith('/leaderboard'))
        .flatMap((m) => points(m.body)),
    ).toEqual([])
    await r.tracker.endAsync()
  })

  it('a zone the app sets over MQTT holds from the next reading on', async () => {
    const B = `runner-b-${store}`
    const work = { lat: 52.5301, lon: 13.4102 }
    const r = await runner(B)
    const app = await connectWithToken(tb, await token(tb, B, 'app'), `app:${B}:phone`, 'ws')
    const t0 = Date.now() - 300_000
    // No zone yet: the fix is on the map.
    await send(r, run(work, t0, 3))
    await waitFor(() => mapHas(B, (p) => near(p, work, 100)), 20_000)

    const states: Record<string, unknown>[] = []
    const refusals: { error: string; detail: string }[] = []
    app.on('message', (_t, p) => {
      const m = JSON.parse(p.toString())
      if (m.error) refusals.push(m)
      else states.push(m.state ?? {})
    })
    await app.subscribeAsync(`users/${B}/preferences/state`, { qos: 1 })
    await app.publishAsync(
      `users/${B}/preferences`,
      JSON.stringify({
        node: 'phone',
        edits: [
          {
            field: 'privacyZones.work',
            value: { lat: work.lat, lon: work.lon, radiusM: 300 },
            hlc: `${Date.now()}:0:phone`,
          },
        ],
      }),
      { qos: 1 },
    ) // resolves on the PUBACK: the zone is merged and in the broker's zone index
    const from = received.length
    // The merged state comes back retained to the user's devices with the zone in it.
    await waitFor(
      () => states.some((st) => JSON.stringify(st['privacyZones.work']) === JSON.stringify({ ...work, radiusM: 300 })),
      20_000,
    )

    const before = await withheld('event_positions', 'privacy_zone')
    await send(r, run({ lat: work.lat + 0.0003, lon: work.lon }, t0 + 15_000, 3))
    await waitFor(async () => (await withheld('event_positions', 'privacy_zone')) > before, 20_000)
    const out = { lat: work.lat + 0.006, lon: work.lon } // ~670 m north
    const tOut = t0 + 25_000 + 80_000
    await send(r, [
      { t: tOut, ...out, acc: 5 },
      { t: tOut, hr: 150 },
    ])
    await waitFor(() => mapHas(B, (p) => near(p, out, 1)), 20_000)
    const after = received.slice(from).flatMap((m) => points(m.body))
    expect(after.filter((p) => near(p, work, 300))).toEqual([])

    // Every position is checked against each zone: twenty at most, an edit making more is refused whole.
    const many = Array.from({ length: 20 }, (_, i) => ({
      field: `privacyZones.z${i}`,
      value: { lat: 10 + i, lon: 10, radiusM: 50 },
      hlc: `${Date.now()}:${i}:phone`,
    }))
    await app.publishAsync(`users/${B}/preferences`, JSON.stringify({ node: 'phone', edits: many }), { qos: 1 })
    await waitFor(() => refusals.some((x) => x.error === 'bad_payload' && x.detail.includes('at most 20')), 20_000)
    expect(tb.pg.preferences.get(B).privacyZones?.map((z) => z.id)).toEqual(['work'])
    await Promise.all([app.endAsync(), r.tracker.endAsync()])
  })

  it('medics see a runner inside their zone while an alert is open; the CLI sets zones; erasure removes them', async () => {
    const C = `runner-c-${store}`
    const home = { lat: 52.4412, lon: 13.2875 }
    const r = await runner(C)
    // From the CLI: offline on PostgreSQL (the runner is not loaded yet, so their first reading loads the zone),
    // through the broker on the embedded store (it owns it).
    const add = await cli(
      'users',
      'zones',
      C,
      'add',
      'home',
      '--lat',
      `${home.lat}`,
      '--lon',
      `${home.lon}`,
      '--radius',
      '250',
      '--label',
      'Home',
    )
    expect(add.code, add.err).toBe(0)
    expect(
      (await cli('users', 'zones', C, 'add', 'gym', '--lat', '52.45', '--lon', '13.3', '--radius', '100')).code,
    ).toBe(0)
    const removed = await cli('users', 'zones', C, 'remove', 'gym', '--json')
    expect(JSON.parse(removed.out)).toEqual([{ id: 'home', ...home, radiusM: 250, label: 'Home' }])
    expect((await cli('users', 'zones', C, 'remove', 'gym')).code).toBe(2)
    expect((await cli('users', 'zones', C, 'add', 'x', '--lat', '95', '--lon', '0', '--radius', '10')).code).toBe(2)
    expect((await cli('users', 'zones', C, 'list')).out).toContain('home')

    // Running inside the zone, then stopped there with no HR: stopped_abnormal opens, medics get it with the position.
    const now = Date.now()
    await send(r, run({ lat: home.lat - 0.0005, lon: home.lon }, now - 240_000, 10))
    const stopAt = { lat: home.lat + 0.0004, lon: home.lon }
    const stop: Record<string, number>[] = []
    for (let t = now - 150_000; t <= now - 5000; t += 5000) stop.push({ t, ...stopAt, acc: 5 })
    await send(r, stop)
    const alert = await waitFor(
      () =>
        received.find(
          (m) =>
            m.client === 'medic' &&
            m.topic === `events/${EVENT}/alerts` &&
            (m.body as { userId: string; state: string }).userId === C &&
            (m.body as { state: string }).state === 'opened',
        ),
      30_000,
    )
    const evidence = alert.body as { kind: string; evidence: { lat: number; lon: number } }
    expect(evidence.kind).toBe('stopped_abnormal')
    expect(near(evidence.evidence, stopAt, 1)).toBe(true)
    // With the alert open, the next fix is on the medics' map although it is inside the zone.
    await send(r, [{ t: Date.now(), ...stopAt, acc: 5 }])
    await waitFor(() => mapHas(C, (p) => p.alert && near(p, stopAt, 1)), 20_000)
    // Inside the zone, C was only ever on the map with an alert open.
    expect(mapHas(C, (p) => !p.alert && near(p, home, 250))).toBe(false)

    // The bundle carries the zone (personal data); erasure removes it from the store and from the broker's memory.
    const c = collector()
    const report = await exportUser(tb.pg.db, c.out, { userId: C, format: 'bundle' })
    // home, and the removed gym as a tombstone (null, its clock only: no coordinates kept)
    expect(report.files?.find((f) => f.name === 'preferences.ndjson')?.rows).toBe(2)
    await r.tracker.endAsync()
    await rpc({ op: 'eraseUser', userId: C })
    const rows = await tb.pg.db.query<{ n: number }>(
      'SELECT count(*)::int AS n FROM user_preferences WHERE user_id = $1',
      [C],
    )
    expect(rows.rows[0]?.n).toBe(0)
    await waitFor(() => tb.pg.preferences.get(C).privacyZones === undefined, 20_000)
    const gone = await cli('users', 'zones', C, 'list')
    expect(gone.code).not.toBe(0)
    expect(gone.err).toContain('unknown user')
  })
})

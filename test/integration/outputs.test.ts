// End to end from a device certificate to apps over WebSocket: alerts, medics, leaderboards, live snapshots, sync.
import crypto from 'node:crypto'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { SessionPersistence } from '../../src/ops/erase-live.js'
import { RedisLeaderboard } from '../../src/outputs/leaderboard.js'
import type { AlertMessage, LeaderboardMessage, LiveSnapshot } from '../../src/outputs/payloads.js'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  nextMessage,
  provisionDevice,
  REDIS_URL,
  type TestBroker,
  startTestBroker,
  subackCode,
  token,
  waitFor,
} from '../helpers/harness.js'

const stores = [
  ['postgres + memory leaderboard', false],
  ['postgres + Redis leaderboard', true],
] as const

function collect<T>(client: MqttClient, topic: string): T[] {
  const out: T[] = []
  client.on('message', (t, p) => {
    if (t === topic) out.push(JSON.parse(p.toString()) as T)
  })
  return out
}

describe.each(stores)('outputs (%s)', (_name, redis) => {
  let tb: TestBroker
  let alice: DeviceCreds
  let collapsed: DeviceCreds
  const runners: DeviceCreds[] = []
  // The Redis boards are keyed by event under the broker's fixed prefix, on a Redis that other runs of this suite
  // (other checkouts, CI jobs) share: a random event id per run, not one that repeats every 100 s.
  const ev = `race${redis ? 'r' : 'm'}-${crypto.randomBytes(6).toString('hex')}`

  beforeAll(async () => {
    tb = await startTestBroker('postgres', redis ? { redisUrl: REDIS_URL } : {})
    alice = await provisionDevice(tb, 'trk-alice', 'alice')
    await tb.pg.registry.createEvent({ eventId: ev, distanceM: 42195, startsAt: new Date(Date.now() - 3600_000) })
    for (const [i, consent] of [true, true, false].entries()) {
      const d = await provisionDevice(tb, `trk-r${i}`, `runner${i}`)
      await tb.pg.registry.joinEvent(ev, `runner${i}`, { consentLeaderboard: consent })
      runners.push(d)
    }
    collapsed = await provisionDevice(tb, 'trk-r9', 'runner9')
    await tb.pg.registry.joinEvent(ev, 'runner9', { consentLeaderboard: false })
  }, 60_000)
  afterAll(async () => {
    if (tb?.pg.leaderboard instanceof RedisLeaderboard) await tb.pg.leaderboard.clear(ev)
    await tb?.stop()
  })

  it('an app over WebSocket receives its alert once per episode, then its resolution; others cannot subscribe', async () => {
    const app = await connectWithToken(tb, await token(tb, 'alice', 'app'), 'app:alice', 'ws-header')
    expect(await subackCode(app, 'users/alice/alerts')).toBe(1)
    const alerts = collect<AlertMessage>(app, 'users/alice/alerts')
    const mallory = await connectWithToken(tb, await token(tb, 'mallory', 'app'), 'app:mallory', 'ws-header')
    expect(await subackCode(mallory, 'users/alice/alerts')).toBe(128)

    const dev = await connectDevice(tb, alice)
    const now = Date.now()
    // 11 minutes at rest with HR 130, sent as the tracker would after a sync: several batches.
    const samples = Array.from({ length: 67 }, (_, i) => ({ t: now - 660_000 + i * 10_000, hr: 130 }))
    for (let b = 0; b < samples.length; b += 10) {
      await dev.publishAsync(
        'devices/trk-alice/readings',
        JSON.stringify({ seq: b, samples: samples.slice(b, b + 10) }),
        { qos: 1 },
      )
    }
    await waitFor(() => alerts.length >= 1)
    expect(alerts[0]).toMatchObject({
      kind: 'hr_high',
      state: 'opened',
      userId: 'alice',
      deviceId: 'trk-alice',
      eventId: null,
    })
    // Still high: no second alert for the same episode.
    await dev.publishAsync(
      'devices/trk-alice/readings',
      JSON.stringify({ seq: 100, samples: [{ t: now + 1000, hr: 131 }] }),
      { qos: 1 },
    )
    // Back to normal: one resolution.
    await dev.publishAsync(
      'devices/trk-alice/readings',
      JSON.stringify({
        seq: 101,
        samples: [
          { t: now + 2000, hr: 70 },
          { t: now + 3000, hr: 68 },
        ],
      }),
      { qos: 1 },
    )
    await waitFor(() => alerts.length >= 2)
    await new Promise((r) => setTimeout(r, 300))
    expect(alerts.map((a) => a.state)).toEqual(['opened', 'resolved'])
    expect(alerts[1]?.id).toBe(alerts[0]?.id)
    const row = await tb.pg.db.query<{ kind: string; resolved: boolean }>(
      'SELECT kind, resolved_at IS NOT NULL AS resolved FROM alerts WHERE id = $1',
      [alerts[0]?.id],
    )
    expect(row.rows[0]).toEqual({ kind: 'hr_high', resolved: true })
    await Promise.all([app.endAsync(), mallory.endAsync(), dev.endAsync()])
  })

  it('race: a stopped runner with no HR alerts the medics of that event (with position), not other medics', async () => {
    const medic = await connectWithToken(tb, await token(tb, 'doc1', 'medic', [ev]), 'medic:doc1', 'ws-header')
    const other = await connectWithToken(tb, await token(tb, 'doc2', 'medic', ['elsewhere']), 'medic:doc2', 'ws-header')
    expect(await subackCode(medic, `events/${ev}/alerts`)).toBe(1)
    expect(await subackCode(other, `events/${ev}/alerts`)).toBe(128)
    const got = nextMessage(medic, `events/${ev}/alerts`)
    const r = collapsed
    const dev = await connectDevice(tb, r)
    const now = Date.now()
    const samples: Record<string, number>[] = [{ t: now - 150_000, hr: 160 }]
    for (let t = now - 120_000; t <= now; t += 5000) samples.push({ t, lat: 52.52, lon: 13.405, acc: 5 })
    await dev.publishAsync(`devices/${r.deviceId}/readings`, JSON.stringify({ seq: 1, samples }), { qos: 1 })
    const alert = JSON.parse((await got).payload.toString()) as AlertMessage
    expect(alert).toMatchObject({
      kind: 'stopped_abnormal',
      severity: 'critical',
      state: 'opened',
      userId: 'runner9',
      eventId: ev,
    })
    expect(alert.evidence).toMatchObject({ lat: 52.52, lon: 13.405, hr: null })
    await Promise.all([medic.endAsync(), other.endAsync(), dev.endAsync()])
  })

  it('leaderboard: consenting runners only, ordered by distance, late points do not move anyone back; live has the rank', async () => {
    const viewer = await connectWithToken(tb, await token(tb, 'runner0', 'app'), 'app:runner0', 'ws-header')
    expect(await subackCode(viewer, `events/${ev}/leaderboard`)).toBe(1)
    expect(await subackCode(viewer, 'users/runner0/live')).toBe(1)
    const boards = collect<LeaderboardMessage>(viewer, `events/${ev}/leaderboard`)
    const lives = collect<LiveSnapshot>(viewer, 'users/runner0/live')
    const now = Date.now() - 60_000
    // runner1 runs 3 m/s, runner0 2 m/s, runner2 (no consent) 4 m/s, over 50 s, fixes every 5 s.
    const speeds = [2, 3, 4]
    await Promise.all(
      runners.map(async (r, i) => {
        const dev = await connectDevice(tb, r)
        const samples = []
        for (let k = 0; k <= 10; k++) {
          samples.push(
            { t: now + k * 5000, lat: 52.4 + (speeds[i]! * k * 5) / 111_195, lon: 13.3, acc: 4 },
            { t: now + k * 5000 + 1, hr: 150 },
          )
        }
        await dev.publishAsync(`devices/${r.deviceId}/readings`, JSON.stringify({ seq: 10, samples }), { qos: 1 })
        // A late, out-of-order fix from the start of the run, and a GPS jump of 5 km in 5 s (refused).
        await dev.publishAsync(
          `devices/${r.deviceId}/readings`,
          JSON.stringify({
            seq: 11,
            samples: [
              { t: now - 2500, lat: 52.4, lon: 13.3, acc: 4 },
              { t: now + 55_000, lat: 52.45, lon: 13.3, acc: 4 },
            ],
          }),
          { qos: 1 },
        )
        await dev.endAsync()
      }),
    )
    // Every batch is committed (PUBACKs), but each runner's state loads and reaches the board on its own schedule:
    // a board of an earlier tick may hold runner0 and runner1 but not yet runner2 (runners: 2). Wait for the board
    // that holds all three; boards only grow here, so it is the last word.
    const board = await waitFor(() => boards.find((b) => b.top.length === 2 && b.runners === 3)).catch((e) => {
      console.log(JSON.stringify(boards), JSON.stringify(lives))
      throw e
    })
    expect(board.top.map((e) => e.userId)).toEqual(['runner1', 'runner0'])
    expect(board.runners).toBe(3)
    expect(board.top[0]?.distanceM).toBeGreaterThan(140)
    expect(board.top[0]?.distanceM).toBeLessThan(160)
    expect(board.top[0]?.paceSPerKm).toBeGreaterThan(300)
    // A snapshot goes out when its runner's state changes, with the rank of that moment. runner0's batches may have
    // reached the board in an earlier output tick than the faster runners' (its snapshot then said rank 1 or 2,
    // rightly); its next reading, sent now that the board holds everyone, must carry rank 3 (runner2 counts for ranks,
    // not for the board).
    const again = await connectDevice(tb, runners[0]!)
    await again.publishAsync(
      `devices/${runners[0]!.deviceId}/readings`,
      JSON.stringify({ seq: 12, samples: [{ t: now + 56_000, hr: 150 }] }),
      { qos: 1 },
    )
    await again.endAsync()
    const live = await waitFor(() => lives.find((l) => l.rank === 3)).catch((e) => {
      console.log(JSON.stringify(boards), JSON.stringify(lives))
      throw e
    })
    expect(live).toMatchObject({ eventId: ev, rank: 3, hr: 150 })
    expect(live.distanceM).toBeGreaterThan(90)
    await viewer.endAsync()
  })

  it('delta sync: readings and alerts after a cursor, in pages, to the asking user only', async () => {
    const app = await connectWithToken(tb, await token(tb, 'alice', 'app'), 'app:alice:sync', 'ws-header')
    expect(await subackCode(app, 'users/alice/sync/response')).toBe(1)
    const pages: {
      readings: { t: number; metric: string; value: number }[]
      alerts: unknown[]
      nextCursor: { readings: number; alerts: number }
      more: boolean
    }[] = []
    app.on('message', (t, p) => {
      if (t === 'users/alice/sync/response') pages.push(JSON.parse(p.toString()))
    })
    let cursor = { readings: 0, alerts: 0 }
    const seen: number[] = []
    for (let i = 0; i < 20; i++) {
      await app.publishAsync('users/alice/sync/request', JSON.stringify({ cursor, limit: 25 }), { qos: 1 })
      await waitFor(() => pages.length > i)
      const page = pages[i]!
      seen.push(...page.readings.map((r) => r.t))
      cursor = page.nextCursor
      if (!page.more) break
    }
    const stored = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.user_id = 'alice'`,
    )
    expect(seen.length).toBe(stored.rows[0]?.n)
    expect(new Set(seen.map((t, i) => `${t}:${i}`)).size).toBe(seen.length)
    expect([...seen].sort((a, b) => a - b)).toEqual(seen)
    expect(pages.flatMap((p) => p.alerts).length).toBeGreaterThanOrEqual(1)
    await app.endAsync()
  })

  it('serves the race-control page and the MQTT browser bundle it uses', async () => {
    const page = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/`)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('race control')
    const js = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/assets/mqtt.min.js`)
    expect(js.status).toBe(200)
    expect((await js.text()).length).toBeGreaterThan(100_000)
  })

  it('an offline app with a persistent session gets the alert it missed, once', async () => {
    const jwt = await token(tb, 'alice', 'app')
    const opts = { clean: false, clientId: 'app:alice:persist' }
    const first = await connectWithToken(tb, jwt, 'app:alice:persist', 'tcp', opts)
    await first.subscribeAsync('users/alice/alerts', { qos: 1 })
    await first.endAsync()
    // While it is away: a low-SpO2 episode.
    const dev = await connectDevice(tb, alice)
    const now = Date.now()
    await dev.publishAsync(
      'devices/trk-alice/readings',
      JSON.stringify({
        seq: 200,
        samples: [0, 30_000, 60_000, 90_000].map((d) => ({ t: now - 90_000 + d + 5000, spo2: 87 })),
      }),
      { qos: 1 },
    )
    // "Missed while away" means queued in the session before the app is back: the alert row commits before the
    // alert is published, and a publish racing the reconnect is both queued and delivered live (QoS 1: at least once).
    const persistence = (tb.pg.broker as unknown as { persistence: SessionPersistence }).persistence
    await waitFor(async () => {
      for await (const p of persistence.outgoingStream({ id: 'app:alice:persist' })) {
        if ((p as { topic: string }).topic === 'users/alice/alerts') return true
      }
      return false
    })
    await dev.endAsync()
    const received: AlertMessage[] = []
    // Listening before the CONNACK is read: the queued alert can arrive in the same read as the CONNACK and be handled
    // before connectAsync's caller resumes.
    const back = await connectWithToken(tb, jwt, 'app:alice:persist', 'tcp', opts, (c) =>
      c.on('message', (_t, p) => received.push(JSON.parse(p.toString()))),
    )
    await waitFor(() => received.length >= 1)
    await new Promise((r) => setTimeout(r, 500))
    expect(received.filter((a) => a.kind === 'spo2_low' && a.state === 'opened')).toHaveLength(1)
    await back.endAsync()
  })
})

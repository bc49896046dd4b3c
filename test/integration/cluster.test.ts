// Cluster mode with real processes: three pulsegate brokers spawned by the test on one fresh PostgreSQL database
// and the local Redis (a per-run prefix), real MQTT clients connecting to the node each case names (standing in for
// the load balancer, so every move is deterministic). Every wait is for a condition; no case depends on which of
// two independent things happens first.
import crypto from 'node:crypto'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AlertMessage, LeaderboardMessage, LiveSnapshot } from '../../src/outputs/payloads.js'
import { haversineMeters } from '../../src/pipeline/validate.js'
import { metricValue, startCluster, type TestCluster } from '../helpers/cluster.js'
import { REDIS_URL, waitFor } from '../helpers/harness.js'

let c: TestCluster
const run = crypto.randomBytes(3).toString('hex')
const clients: MqttClient[] = []
const WAIT = 60_000 // conditions, not delays: generous because six suites may share two cores

function track(client: MqttClient): MqttClient {
  clients.push(client)
  return client
}

function collect<T>(client: MqttClient, topic: string): T[] {
  const out: T[] = []
  client.on('message', (t, p) => {
    if (t === topic) out.push(JSON.parse(p.toString()) as T)
  })
  return out
}

/** 11 minutes at rest with HR 130 (an hr_high episode), sent in batches as a tracker would after a sync. */
async function sendHighHr(dev: MqttClient, deviceId: string, now: number, seq0 = 0): Promise<void> {
  const samples = Array.from({ length: 67 }, (_, i) => ({ t: now - 660_000 + i * 10_000, hr: 130 }))
  for (let b = 0; b < samples.length; b += 10)
    await dev.publishAsync(
      `devices/${deviceId}/readings`,
      JSON.stringify({ seq: seq0 + b, samples: samples.slice(b, b + 10) }),
      { qos: 1 },
    )
}

beforeAll(async () => {
  c = await startCluster(3)
}, 240_000)

afterAll(async () => {
  await Promise.all(clients.map((m) => m.endAsync(true).catch(() => {})))
  await c?.stop()
}, 120_000)

describe('cluster of three broker processes', () => {
  it('a device on node 1 → an app on node 2 gets its alert and its live snapshot', async () => {
    const [n1, n2] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const user = `ua${run}`
    const dev = await c.provisionDevice(`trk-a${run}`, user)
    const app = track(await c.connectApp(n2, await c.token(user, 'app'), `app:${user}`))
    const alerts = collect<AlertMessage>(app, `users/${user}/alerts`)
    const live = collect<LiveSnapshot>(app, `users/${user}/live`)
    await app.subscribeAsync(`users/${user}/alerts`, { qos: 1 })
    await app.subscribeAsync(`users/${user}/live`, { qos: 0 })
    // Whatever node 1 routes through Redis under devices/… is seen here. Readings would be PUBLISHed right after their
    // PUBACK on the connection that later carries the alert, so they would arrive before the alert does.
    const tap = new Redis(REDIS_URL)
    const routed: string[] = []
    tap.on('pmessage', (_p: string, channel: string) => routed.push(channel))
    await tap.psubscribe(`${c.prefix}/devices/*`)
    try {
      const d = track(await c.connectDevice(n1, dev))
      await d.publishAsync(`devices/${dev.deviceId}/status`, JSON.stringify({ battery: 80 }), { qos: 1 })
      await sendHighHr(d, dev.deviceId, Date.now())
      await waitFor(() => alerts.length >= 1 && live.length >= 1, WAIT)
      expect(alerts[0]).toMatchObject({ kind: 'hr_high', state: 'opened', userId: user, deviceId: dev.deviceId })
      await waitFor(() => live.some((s) => s.hr === 130), WAIT)
      // Readings and status stay on the node that committed them: not one went through Redis.
      expect(routed).toEqual([])
    } finally {
      await tap.quit()
    }
  })

  it('a persistent app subscribing to three topics in one SUBSCRIBE gets its SUBACK on every node', async () => {
    const user = `us${run}`
    const jwt = await c.token(user, 'app')
    for (const node of c.nodes) {
      const app = track(await c.connectApp(node, jwt, `app:${user}:${node.name}`, { clean: false }))
      const topics = [`users/${user}/alerts`, `users/${user}/live`, `users/${user}/recommendations`]
      // MQTT.js sends an array as one SUBSCRIBE packet: the case that hung on the Redis emitter (aedes#569).
      const granted = await app.subscribeAsync(topics, { qos: 1 })
      expect(granted.map((g) => g.topic).sort()).toEqual([...topics].sort())
      expect(granted.every((g) => g.qos === 0 || g.qos === 1)).toBe(true)
      await app.endAsync()
    }
  })

  it('an offline persistent app gets an alert produced via node 2 when it reconnects to node 3, exactly once', async () => {
    const [n1, n2, n3] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const user = `uo${run}`
    const clientId = `app:${user}`
    const dev = await c.provisionDevice(`trk-o${run}`, user)
    const jwt = await c.token(user, 'app')
    const first = await c.connectApp(n1, jwt, clientId, { clean: false })
    await first.subscribeAsync(`users/${user}/alerts`, { qos: 1 })
    await first.endAsync()

    // The queue lives in Redis under the deployment's prefix (db 1): the alert is there while the app is away.
    const redis = new Redis(REDIS_URL, { db: 1 })
    const queue = `${c.prefix}:s:outgoing:${encodeURIComponent(clientId)}`
    try {
      const d = track(await c.connectDevice(n2, dev))
      await sendHighHr(d, dev.deviceId, Date.now())
      await waitFor(async () => (await redis.llen(queue)) >= 1, WAIT)
      // Queued outputs expire (packetTTL, 24 h by default) rather than waiting forever for an app that never returns.
      for (const pkt of await redis.lrange(queue, 0, -1)) {
        const ttl = await redis.ttl(`${c.prefix}:s:${pkt}`)
        expect(ttl).toBeGreaterThan(0)
        expect(ttl).toBeLessThanOrEqual(24 * 3600)
      }

      const back = track(await c.connectApp(n3, jwt, clientId, { clean: false }))
      const alerts: AlertMessage[] = []
      back.on('message', (t, p) => {
        if (t === `users/${user}/alerts`) alerts.push(JSON.parse(p.toString()) as AlertMessage)
      })
      // Every queued copy is delivered and acknowledged before the queue is empty, so a duplicate in it would
      // have arrived by then.
      await waitFor(async () => alerts.length >= 1 && (await redis.llen(queue)) === 0, WAIT)
      const byId = new Map<string, number>()
      for (const a of alerts) byId.set(`${a.id}/${a.state}`, (byId.get(`${a.id}/${a.state}`) ?? 0) + 1)
      expect([...byId.values()].every((n) => n === 1)).toBe(true)
      expect(alerts[0]).toMatchObject({ kind: 'hr_high', state: 'opened', userId: user })
    } finally {
      await redis.quit()
    }
  })

  it('a client id connecting to another node takes its session over: the old connection is closed', async () => {
    const [n1, n2] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const user = `ut${run}`
    const jwt = await c.token(user, 'app')
    const old = track(await c.connectApp(n1, jwt, `app:${user}`, { clean: false }))
    const closed = new Promise<void>((resolve) => old.once('close', () => resolve()))
    const fresh = track(await c.connectApp(n2, jwt, `app:${user}`, { clean: false }))
    await closed
    expect(fresh.connected).toBe(true)
  })

  it('a user with devices on two nodes has one owner: the other node forwards, live follows both devices', async () => {
    const [n1, n2, n3] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const user = `uw${run}`
    const a = await c.provisionDevice(`trk-w1${run}`, user)
    const b = await c.provisionDevice(`trk-w2${run}`, user)
    const app = track(await c.connectApp(n3, await c.token(user, 'app'), `app:${user}`))
    const live = collect<LiveSnapshot>(app, `users/${user}/live`)
    await app.subscribeAsync(`users/${user}/live`, { qos: 0 })
    const before = await Promise.all(c.nodes.map((n) => c.metrics(n)))
    const da = track(await c.connectDevice(n1, a))
    const db = track(await c.connectDevice(n2, b))
    const now = Date.now()
    await da.publishAsync(
      `devices/${a.deviceId}/readings`,
      JSON.stringify({ seq: 1, samples: [{ t: now - 3000, hr: 101 }] }),
      { qos: 1 },
    )
    await waitFor(() => live.some((s) => s.hr === 101), WAIT)
    await db.publishAsync(
      `devices/${b.deviceId}/readings`,
      JSON.stringify({ seq: 1, samples: [{ t: now - 2000, hr: 102 }] }),
      { qos: 1 },
    )
    await waitFor(() => live.some((s) => s.hr === 102), WAIT)
    await da.publishAsync(
      `devices/${a.deviceId}/readings`,
      JSON.stringify({ seq: 2, samples: [{ t: now - 1000, hr: 103 }] }),
      { qos: 1 },
    )
    await waitFor(() => live.some((s) => s.hr === 103), WAIT)
    const after = await Promise.all(c.nodes.map((n) => c.metrics(n)))
    const delta = (name: string, labels: Record<string, string> = {}) =>
      after.map((t, i) => metricValue(t, name, labels) - metricValue(before[i] as string, name, labels))
    // Node 1 took the user first and holds the lease; node 2 forwarded its device's batch there instead of feeding
    // an output state of its own (other cases' users have one device each, so no other batch is forwarded).
    const leases = new Redis(REDIS_URL)
    try {
      expect(await leases.get(`${c.prefix}:own:${user}`)).toMatch(/^n1:/)
    } finally {
      await leases.quit()
    }
    expect(delta('pulsegate_cluster_forwarded_batches_total', { direction: 'out' })).toEqual([0, 1, 0])
    expect(delta('pulsegate_cluster_forwarded_batches_total', { direction: 'in' })).toEqual([1, 0, 0])
    // The owner merged both devices' samples: the newest snapshot is the newest sample of either device.
    expect(live[live.length - 1]?.hr).toBe(103)
  })

  it('a device that moves node continues from its last committed fix: no stretch counted twice', async () => {
    const [n1, n2] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const dev = await c.provisionDevice(`trk-m${run}`, `um${run}`)
    const now = Date.now()
    const fixes = [0, 1, 2, 3].map((i) => ({
      t: now - 60_000 + i * 10_000,
      lat: 52.52 + i * 0.0003,
      lon: 13.405,
      acc: 5,
    }))
    const send = async (node: TestCluster['nodes'][0], seq: number, fs: typeof fixes) => {
      const m = await c.connectDevice(node, dev)
      await m.publishAsync(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq, samples: fs }), { qos: 1 })
      await m.endAsync()
    }
    await send(n1, 1, fixes.slice(0, 2)) // A, B on node 1 (node 1 remembers B)
    await send(n2, 2, fixes.slice(2, 3)) // C on node 2
    await send(n1, 3, fixes.slice(3, 4)) // D back on node 1: the segment is C→D, not B→D
    const expected = [1, 2, 3].reduce((s, i) => {
      const p = fixes[i - 1] as (typeof fixes)[0]
      const q = fixes[i] as (typeof fixes)[0]
      return s + haversineMeters(p.lat, p.lon, q.lat, q.lon)
    }, 0)
    const key = await c.db.query<{ device_key: number }>('SELECT device_key FROM devices WHERE device_id = $1', [
      dev.deviceId,
    ])
    const r = await c.db.query<{ d: number; n: string }>(
      'SELECT coalesce(sum(value), 0)::float8 AS d, count(*) AS n FROM samples WHERE device_key = $1 AND metric = 7',
      [key.rows[0]?.device_key],
    )
    expect(Number(r.rows[0]?.n)).toBe(3)
    expect(r.rows[0]?.d).toBeCloseTo(expected, 6)
  })

  it('a leaderboard subscriber gets each update once, from one node, with runners on all three nodes', async () => {
    const ev = `ev${run}`
    await c.registry.createEvent({
      eventId: ev,
      isPublic: true,
      distanceM: 42195,
      startsAt: new Date(Date.now() - 3600_000),
    })
    const devs = []
    for (let i = 0; i < 3; i++) {
      const d = await c.provisionDevice(`trk-l${i}${run}`, `ul${i}${run}`)
      await c.registry.joinEvent(ev, d.userId, { consentLeaderboard: true })
      devs.push(d)
    }
    const watcher = track(
      await c.connectApp(c.nodes[2] as TestCluster['nodes'][0], await c.token(`uv${run}`, 'app'), `app:uv${run}`),
    )
    const boards = collect<LeaderboardMessage>(watcher, `events/${ev}/leaderboard`)
    await watcher.subscribeAsync(`events/${ev}/leaderboard`, { qos: 0 })
    const before = await Promise.all(c.nodes.map((n) => c.metrics(n)))
    const now = Date.now()
    await Promise.all(
      devs.map(async (d, i) => {
        const m = track(await c.connectDevice(c.nodes[i] as TestCluster['nodes'][0], d))
        const samples = [0, 1, 2].map((k) => ({
          t: now - 30_000 + k * 10_000,
          lat: 52.5 + k * 0.0002 * (i + 1),
          lon: 13.4,
          acc: 5,
        }))
        await m.publishAsync(`devices/${d.deviceId}/readings`, JSON.stringify({ seq: 1, samples }), { qos: 1 })
      }),
    )
    await waitFor(() => boards.some((b) => b.top.length === 3 && b.top.every((e) => e.distanceM > 0)), WAIT)
    const published = async () => {
      const after = await Promise.all(c.nodes.map((n) => c.metrics(n)))
      return after.map(
        (t, i) =>
          metricValue(t, 'pulsegate_leaderboard_publish_seconds_count') -
          metricValue(before[i] as string, 'pulsegate_leaderboard_publish_seconds_count'),
      )
    }
    // Every board that went out was published by the leader alone, and the subscriber got each of them once.
    await waitFor(async () => (await published()).reduce((s, x) => s + x, 0) === boards.length, WAIT)
    const perNode = await published()
    expect(perNode.filter((x) => x > 0)).toHaveLength(1)
  })

  // Last: it leaves the cluster with two nodes.
  it("kill -9 of a user's owner node: the user's outputs continue on the node their device reconnects to", async () => {
    const [n1, n2, n3] = c.nodes as [TestCluster['nodes'][0], TestCluster['nodes'][0], TestCluster['nodes'][0]]
    const user = `uk${run}`
    const dev = await c.provisionDevice(`trk-k${run}`, user)
    const app = track(await c.connectApp(n3, await c.token(user, 'app'), `app:${user}`))
    const live = collect<LiveSnapshot>(app, `users/${user}/live`)
    await app.subscribeAsync(`users/${user}/live`, { qos: 0 })
    const now = Date.now()
    const d1 = await c.connectDevice(n1, dev)
    d1.on('error', () => {})
    await d1.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({ seq: 1, samples: [{ t: now - 2000, hr: 111 }] }),
      { qos: 1 },
    )
    await waitFor(() => live.some((s) => s.hr === 111), WAIT)
    n1.proc.kill('SIGKILL')
    await n1.exited
    d1.end(true)
    // Node 1's lease on the user is still running, but nobody listens on its channel any more: node 2 takes over.
    const d2 = track(await c.connectDevice(n2, dev))
    await d2.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({ seq: 2, samples: [{ t: now - 1000, hr: 112 }] }),
      { qos: 1 },
    )
    await waitFor(() => live.some((s) => s.hr === 112), WAIT)
  })
})

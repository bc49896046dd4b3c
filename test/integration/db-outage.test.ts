// The database goes away mid-stream (its connections cut, new ones refused, through a real TCP proxy): no PUBACK
// while it is gone, the broker keeps serving everyone else, and after it returns every acknowledged sample is stored
// exactly once without a restart.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { DERIVED_METRICS } from '../../src/pipeline/derive.js'
import { haversineMeters } from '../../src/pipeline/validate.js'
import { metricValue } from '../helpers/metrics-text.js'
import { type ProxiedDatabase, type TcpProxy, testDatabaseBehindProxy } from '../helpers/tcp-proxy.js'

let tb: TestBroker
let proxy: TcpProxy
let database: ProxiedDatabase

beforeAll(async () => {
  database = await testDatabaseBehindProxy()
  proxy = database.proxy
  tb = await startTestBroker(
    'postgres',
    { ingest: { maxQueuedRows: 400, commitTimeoutMs: 30_000 } },
    { dbUrl: database.url },
  )
}, 60_000)
afterAll(async () => {
  proxy?.restore()
  await tb?.stop()
  await database?.close()
})

interface Sent {
  t: number
  sentAt: number
  ackedAt: number | null
}

it('no PUBACK while the database is gone; everything acked is stored exactly once after it returns', async () => {
  const devices: DeviceCreds[] = []
  for (let i = 0; i < 5; i++) devices.push(await provisionDevice(tb, `steady-${i}`, `u${i}`))
  const flood = await provisionDevice(tb, 'flood-1', 'u9')
  const clients: MqttClient[] = await Promise.all(devices.map((d) => connectDevice(tb, d)))
  const floodDevice = await connectDevice(tb, flood)
  const qos0Device = await connectDevice(tb, await provisionDevice(tb, 'qos0-1', 'u8'))
  const sent = new Map<string, Sent[]>()
  let running = true
  let cutAt = Number.POSITIVE_INFINITY
  let restoredAt = Number.POSITIVE_INFINITY
  const t0 = Date.now() - 3600_000

  // Five devices each keep one QoS 1 batch of 5 samples in flight, like firmware with an in-flight window of 1.
  const loops = clients.map(async (c, i) => {
    const id = devices[i]!.deviceId
    const mine: Sent[] = []
    sent.set(id, mine)
    for (let b = 0; running; b++) {
      const batch = Array.from({ length: 5 }, (_, k) => ({ t: t0 + b * 5000 + k * 1000, hr: 100 + k }))
      const sentAt = Date.now()
      const entries = batch.map((s) => ({ t: s.t, sentAt, ackedAt: null as number | null }))
      mine.push(...entries)
      await c.publishAsync(`devices/${id}/readings`, JSON.stringify({ seq: b, samples: batch }), { qos: 1 })
      const now = Date.now()
      for (const e of entries) e.ackedAt = now
    }
  })

  // The stream is going: every device has had two batches acknowledged (a condition, not a time: on a busy machine
  // 800 ms may not be enough for one).
  await waitFor(() => devices.every((d) => (sent.get(d.deviceId) ?? []).filter((e) => e.ackedAt !== null).length >= 10))
  cutAt = Date.now()
  proxy.cut()

  // While the database is gone: the broker still serves others.
  await new Promise((r) => setTimeout(r, 300))
  const health = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/healthz`)
  expect(health.status).toBe(200)
  const app = await connectWithToken(tb, await token(tb, 'u1', 'app'), 'app:u1')
  await app.publishAsync('users/u1/sync/request', '{}', { qos: 1 })
  await waitFor(async () => (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/readyz`)).status === 503)

  // A QoS 0 burst may fill only half of the queue (200 of 400 rows): the rest is dropped and counted, and the room
  // stays for QoS 1.
  const queuedBefore = tb.pg.writer.queuedRows
  // Each batch ends with a GPS fix 111 m further north: a shed batch must not move the device's track, or the
  // distance between the fixes around it would be lost.
  const fixAt = (b: number) => ({ t: t0 - 2_000_000 + b * 100_000 + 49_500, lat: 52.5 + b * 0.001, lon: 13.4 })
  for (let b = 0; b < 8; b++) {
    const batch: Record<string, number>[] = Array.from({ length: 50 }, (_, k) => ({
      t: t0 - 2_000_000 + b * 100_000 + k * 1000,
      hr: 70,
    }))
    batch.push(fixAt(b))
    await qos0Device.publishAsync('devices/qos0-1/readings', JSON.stringify({ seq: b, samples: batch }), { qos: 0 })
  }
  await waitFor(
    async () =>
      metricValue(
        await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_dropped_total'),
        'pulsegate_ingest_dropped_total',
        { reason: 'qos0_overload' },
      ) > 0,
  )
  expect(tb.pg.writer.queuedRows).toBeLessThanOrEqual(Math.max(200, queuedBefore) + 50)

  // A burst beyond the bounded queue: refused unacked (connection closed), never acked-and-dropped.
  const floodClient = floodDevice
  const floodAcked: number[] = []
  const floodSends = Array.from({ length: 10 }, (_, b) => {
    const batch = Array.from({ length: 100 }, (_, k) => ({ t: t0 + b * 100_000 + k * 1000, hr: 80 }))
    return floodClient
      .publishAsync('devices/flood-1/readings', JSON.stringify({ seq: b, samples: batch }), { qos: 1 })
      .then(() => floodAcked.push(...batch.map((s) => s.t)))
      .catch(() => {})
  })
  await waitFor(() => !floodClient.connected)
  await new Promise((r) => setTimeout(r, 2000))

  // No PUBACK while the database is gone: nothing sent after the cut may be acknowledged before the restore. (The
  // batch in flight at the cut may be: its commit can have landed just before, and its PUBACK arrive any time later
  // on a busy machine, so a grace period after cutAt would be a guess.)
  const ackedDuringOutage = [...sent.values()].flat().filter((e) => e.sentAt > cutAt && e.ackedAt !== null).length
  expect(ackedDuringOutage).toBe(0)
  expect(floodAcked.length).toBe(0)

  restoredAt = Date.now()
  proxy.restore()
  await waitFor(async () => (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/readyz`)).status === 200, 15_000)
  await new Promise((r) => setTimeout(r, 700))
  running = false
  await Promise.all(loops)
  // The flood client was cut off: its unacked publishes never settle (no reconnect); give its queued rows time to land.
  void floodSends
  await waitFor(() => tb.pg.writer.queuedRows === 0)

  const check = await tb.pg.db.query<{ device_id: string; t: number; n: number }>(
    `SELECT d.device_id, (extract(epoch from s.time) * 1000)::float8 AS t, count(*)::int AS n
     FROM samples s JOIN devices d USING (device_key) GROUP BY 1, 2`,
  )
  expect(check.rows.every((r) => r.n === 1)).toBe(true)
  const stored = new Map<string, Set<number>>()
  for (const r of check.rows) {
    if (!stored.has(r.device_id)) stored.set(r.device_id, new Set())
    stored.get(r.device_id)!.add(Math.round(Number(r.t)))
  }
  let acked = 0
  for (const [id, entries] of sent) {
    for (const e of entries) {
      if (e.ackedAt === null) continue
      acked++
      expect(stored.get(id)?.has(e.t), `${id} sample ${e.t} acked but not stored`).toBe(true)
    }
  }
  // Acks resumed after the restore, and the devices went on sending.
  const after = [...sent.values()].flat().filter((e) => e.ackedAt !== null && e.ackedAt > restoredAt).length
  expect(after).toBeGreaterThan(0)
  expect(acked).toBeGreaterThan(25)
  for (const t of floodAcked) expect(stored.get('flood-1')?.has(t)).toBe(true)

  // After the outage one more fix of the QoS 0 device: the distance stored for it spans the stored fixes exactly
  // (they lie on a line), the shed ones in between included in no segment.
  await qos0Device.publishAsync('devices/qos0-1/readings', JSON.stringify({ seq: 100, samples: [fixAt(9)] }), {
    qos: 1,
  })
  const fixes = await tb.pg.db.query<{ lat: number; lon: number }>(
    `SELECT p.lat, p.lon FROM positions p JOIN devices d USING (device_key) WHERE d.device_id = 'qos0-1' ORDER BY p.time`,
  )
  expect(fixes.rows.length).toBeGreaterThanOrEqual(2)
  expect(fixes.rows.length).toBeLessThan(10) // some were shed
  const first = fixes.rows[0]!
  const last = fixes.rows[fixes.rows.length - 1]!
  const dist = await tb.pg.db.query<{ m: number }>(
    `SELECT coalesce(sum(s.value), 0)::float8 AS m FROM samples s JOIN devices d USING (device_key)
     WHERE d.device_id = 'qos0-1' AND s.metric = $1`,
    [DERIVED_METRICS.distance],
  )
  expect(Number(dist.rows[0]?.m)).toBeCloseTo(haversineMeters(first.lat, first.lon, last.lat, last.lon), 0)
  const refused = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_refused_total')
  expect(refused).toMatch(/reason="queue_full"/)
  await app.endAsync()
  await Promise.all(clients.map((c) => c.endAsync()))
  floodClient.end(true)
  await qos0Device.endAsync()
}, 60_000)

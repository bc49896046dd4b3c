// Graceful shutdown under load: stop() while 20 devices publish QoS 1 batches. It finishes, every batch that got a
// PUBACK is in the database, every client is disconnected, and no listener accepts any more.
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import type { MqttClient } from 'mqtt'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  connectDevice,
  type DeviceCreds,
  lockWaits,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  waitFor,
} from '../helpers/harness.js'

const DEVICES = 20
const SAMPLES_PER_BATCH = 10
const SHUTDOWN_TIMEOUT_MS = 5000

let tb: TestBroker
let ports: { mqtt: number; mqtts: number; http: number }
const devs: DeviceCreds[] = []
const clients: MqttClient[] = []

beforeAll(async () => {
  tb = await startTestBroker('postgres', { limits: { shutdownTimeoutMs: SHUTDOWN_TIMEOUT_MS } })
  ports = { mqtt: tb.pg.ports.mqtt!, mqtts: tb.pg.ports.mqtts!, http: tb.pg.ports.http }
  for (let i = 0; i < DEVICES; i++)
    devs.push(await provisionDevice(tb, `sd-${String(i).padStart(2, '0')}`, `user${i % 5}`))
})

afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => {})))
  await tb?.stop() // stop() is idempotent; this also drops the test database
})

interface DeviceRun {
  deviceId: string
  client: MqttClient
  closed: Promise<number>
  /** `t` of every sample in a batch that got its PUBACK */
  acked: number[]
  batchesAcked: number
  batchesSent: number
}

/** Publishes QoS 1 batches back to back until the connection closes; each sample has a unique t for its device. */
async function publishLoop(r: DeviceRun, base: number): Promise<void> {
  let seq = 0
  for (;;) {
    if (!r.client.connected) return
    seq++
    const ts = Array.from({ length: SAMPLES_PER_BATCH }, (_, k) => base + seq * SAMPLES_PER_BATCH + k)
    const payload = JSON.stringify({ seq, samples: ts.map((t, k) => ({ t, hr: 60 + ((seq + k) % 100) })) })
    r.batchesSent++
    // With reconnectPeriod 0 a QoS 1 publish on a dead connection never settles: race it with the close.
    const outcome = await Promise.race([
      r.client.publishAsync(`devices/${r.deviceId}/readings`, payload, { qos: 1 }).then(
        () => 'acked' as const,
        () => 'failed' as const,
      ),
      r.closed.then(() => 'closed' as const),
    ])
    if (outcome !== 'acked') return
    r.acked.push(...ts)
    r.batchesAcked++
  }
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1')
    const timer = setTimeout(() => {
      sock.destroy()
      resolve('timeout')
    }, 2000)
    sock.once('connect', () => {
      clearTimeout(timer)
      sock.destroy()
      resolve('connected')
    })
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer)
      resolve(err.code ?? err.message)
    })
  })
}

describe('stop() while devices publish', () => {
  it('drains, keeps every acknowledged sample, disconnects everyone and closes the listeners', async () => {
    const runs: DeviceRun[] = []
    for (const d of devs) {
      const client = await connectDevice(tb, d)
      clients.push(client)
      const closed = new Promise<number>((resolve) => client.once('close', () => resolve(Date.now())))
      runs.push({ deviceId: d.deviceId, client, closed, acked: [], batchesAcked: 0, batchesSent: 0 })
    }
    const base = Date.now() - 10 * 60_000
    const loops = runs.map((r) => publishLoop(r, base))

    // Let the load build up (every device has had two batches acknowledged: a condition, not a time), then stop
    // while batches are in flight.
    await waitFor(() => runs.every((r) => r.batchesAcked >= 2))
    const ackedBeforeStop = runs.reduce((n, r) => n + r.batchesAcked, 0)
    expect(ackedBeforeStop).toBeGreaterThan(DEVICES)
    // stop() returns (the test's timeout bounds it). How long it takes is not asserted: the drain waits up to the
    // grace period for commits, and what follows it takes whatever a loaded machine needs; timing it would fail on a
    // busy machine and prove nothing on an idle one.
    await tb.pg.stop()

    // Every client is disconnected (their sockets were closed by stop(); each client sees it once the shared event
    // loop gets to it). A bound for the failure message only, far above what the close takes even on a loaded machine.
    const bound = new AbortController()
    const closedAt = await Promise.race([
      Promise.all(runs.map((r) => r.closed)),
      sleep(20_000, null, { signal: bound.signal }).catch(() => null),
    ])
    bound.abort()
    expect(closedAt, 'some clients were not disconnected').not.toBeNull()
    await Promise.all(loops)
    for (const r of runs) expect(r.client.connected).toBe(false)

    // The listeners are gone.
    expect(await refused(ports.mqtt)).toBe('ECONNREFUSED')
    expect(await refused(ports.mqtts)).toBe('ECONNREFUSED')
    expect(await refused(ports.http)).toBe('ECONNREFUSED')

    // Every acknowledged sample is in the database (read with a fresh connection: the broker's pool is closed).
    const db = new pg.Client({ connectionString: tb.dbUrl! })
    await db.connect()
    try {
      const res = await db.query<{ device_id: string; t: string }>(
        `SELECT d.device_id, round(extract(epoch FROM s.time) * 1000)::bigint::text AS t
         FROM samples s JOIN devices d USING (device_key) WHERE d.device_id LIKE 'sd-%'`,
      )
      const stored = new Set(res.rows.map((r) => `${r.device_id}@${r.t}`))
      let acked = 0
      const missing: string[] = []
      for (const r of runs) {
        for (const t of r.acked) {
          acked++
          if (!stored.has(`${r.deviceId}@${t}`)) missing.push(`${r.deviceId}@${t}`)
        }
      }
      expect(missing.slice(0, 10), `${missing.length} acknowledged samples are missing`).toEqual([])
      expect(acked).toBeGreaterThan(DEVICES * SAMPLES_PER_BATCH)
      // Batches committed but not acknowledged (in flight at the cut) may be there too; nothing else is.
      expect(stored.size).toBeGreaterThanOrEqual(acked)
      expect(stored.size).toBeLessThanOrEqual(runs.reduce((n, r) => n + r.batchesSent, 0) * SAMPLES_PER_BATCH)
    } finally {
      await db.end()
    }
  })
})

describe('stop() while a commit is stuck in the database', () => {
  it('returns although the stuck statement never finishes; the batch is not acknowledged', async () => {
    const stuck = await startTestBroker('postgres', { limits: { shutdownTimeoutMs: 500 } })
    const locker = new pg.Client({ connectionString: stuck.dbUrl! })
    const watcher = new pg.Client({ connectionString: stuck.dbUrl! })
    await locker.connect()
    await watcher.connect()
    let client: MqttClient | null = null
    try {
      const dev = await provisionDevice(stuck, 'sd-stuck', 'user-stuck')
      client = await connectDevice(stuck, dev)
      await locker.query('BEGIN')
      await locker.query('LOCK TABLE samples IN EXCLUSIVE MODE')
      let acked = false
      client
        .publishAsync('devices/sd-stuck/readings', JSON.stringify({ seq: 1, samples: [{ t: Date.now(), hr: 70 }] }), {
          qos: 1,
        })
        .then(
          () => {
            acked = true
          },
          () => {},
        )
      // The commit is out and waits on the lock (seen from a connection outside the locker's transaction).
      await waitFor(async () => (await lockWaits(watcher, '%INSERT INTO samples%')) > 0)
      // Before the bound on the closes, this never returned: pool.end() waited for the stuck connection.
      await stuck.pg.stop()
      const still = await lockWaits(watcher, '%INSERT INTO samples%')
      expect(still, 'the statement was still waiting when stop() returned').toBeGreaterThan(0)
      expect(acked).toBe(false)
    } finally {
      await locker.query('ROLLBACK').catch(() => {})
      await locker.end()
      await watcher.end()
      await client?.endAsync(true).catch(() => {})
      await stuck.stop()
    }
  })
})

// Derived distance exactly once (issue #14): it is derived in the commit transaction from the fixes that transaction
// stored and the device's newest committed fix, so a batch refused (its commit timed out) and retried gets its
// distance once — never twice, never zero — and a restart in the middle of a track loses no stretch either.
import type { MqttClient } from 'mqtt'
import pg from 'pg'
import { afterAll, describe, expect, it } from 'vitest'
import { haversineMeters } from '../../src/pipeline/validate.js'
import {
  connectDevice,
  type DeviceCreds,
  lockWaits,
  provisionDevice,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  waitFor,
} from '../helpers/harness.js'

const T0 = Date.now() - 600_000
/** A fix a second, ~3.3 m apart, turning a little so the length is not a straight line. */
const fix = (i: number) => ({ t: T0 + i * 1000, lat: 52.5 + i * 0.00003, lon: 13.4 + Math.sin(i / 5) * 0.00002 })
const batch = (seq: number, from: number, n: number) =>
  JSON.stringify({ seq, samples: Array.from({ length: n }, (_, k) => fix(from + k)) })
function trackLength(n: number): number {
  let m = 0
  for (let i = 1; i < n; i++) {
    const a = fix(i - 1)
    const b = fix(i)
    m += haversineMeters(a.lat, a.lon, b.lat, b.lon)
  }
  return m
}

async function storedDistance(tb: TestBroker, deviceId: string): Promise<{ m: number; rows: number }> {
  const r = await tb.pg.db.query<{ m: number | null; n: number }>(
    `SELECT sum(s.value)::float8 AS m, count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
     WHERE d.device_id = $1 AND s.metric = 7`,
    [deviceId],
  )
  return { m: Number(r.rows[0]?.m ?? 0), rows: r.rows[0]?.n ?? 0 }
}

/** Publishes QoS 1; resolves true on PUBACK, false when the broker refused it by closing the connection. */
function publishOrRefused(client: MqttClient, topic: string, payload: string): Promise<boolean> {
  return new Promise((resolve) => {
    const onClose = () => resolve(false)
    client.once('close', onClose)
    client.publish(topic, payload, { qos: 1 }, (err) => {
      client.off('close', onClose)
      resolve(!err)
    })
  })
}

/** A device's retry loop: reconnect and send the same bytes until the broker acks them (bounded). */
async function sendUntilAcked(tb: TestBroker, dev: DeviceCreds, payload: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const client = await connectDevice(tb, dev)
    const acked = await publishOrRefused(client, `devices/${dev.deviceId}/readings`, payload)
    await client.endAsync(!acked)
    if (acked) return
  }
  throw new Error('never acked')
}

/** Until the commit transaction waits on the test's lock on positions (seen from another connection). */
function waitForLockWait(c: pg.Client): Promise<boolean> {
  return waitFor(async () => (await lockWaits(c, '%INSERT INTO positions%')) > 0, 30_000)
}

describe('distance of a refused-then-retried batch (postgres, a lock makes the commit time out)', () => {
  let tb: TestBroker
  afterAll(async () => {
    await tb?.stop()
  })

  it('is stored once: the stored distance equals the length of the track', async () => {
    tb = await startTestBroker('postgres', { ingest: { commitTimeoutMs: 300 } })
    const dev: DeviceCreds = await provisionDevice(tb, 'dist-1', 'dist-user')
    const topic = 'devices/dist-1/readings'
    await sendUntilAcked(tb, dev, batch(1, 0, 10))
    let client = await connectDevice(tb, dev)

    const locker = new pg.Client({ connectionString: tb.dbUrl! })
    await locker.connect()
    try {
      await locker.query('BEGIN')
      await locker.query('LOCK TABLE positions IN EXCLUSIVE MODE')
      // The middle of the track: its commit waits on the lock until the broker gives up and refuses it.
      const middle = batch(2, 10, 10)
      expect(await publishOrRefused(client, topic, middle)).toBe(false)
      await client.endAsync(true)
      // The device retries while the first attempt is still stuck: refused again.
      client = await connectDevice(tb, dev)
      expect(await publishOrRefused(client, topic, middle)).toBe(false)
      await client.endAsync(true)
      await locker.query('ROLLBACK')
      // Released: the stuck attempts commit (or find their rows stored); the device retries until acked.
      await sendUntilAcked(tb, dev, middle)
    } finally {
      await locker.query('ROLLBACK').catch(() => {})
      await locker.end()
    }
    await sendUntilAcked(tb, dev, batch(3, 20, 10))
    // Nothing queued any more: every attempt has committed or found its rows there.
    await waitFor(() => tb.pg.writer.queuedRows === 0)
    const stored = await storedDistance(tb, 'dist-1')
    expect(stored.rows).toBe(29)
    expect(stored.m).toBeCloseTo(trackLength(30), 6)
  })
})

describe('distance of a refused batch retried on a restarted broker (postgres)', () => {
  let first: TestBroker | null = null
  let tb: TestBroker | null = null
  afterAll(async () => {
    await tb?.stop()
    await first?.stop()
  })

  it('is derived by the new process from the committed track: the stored distance equals the track length', async () => {
    first = await startTestBroker('postgres', { ingest: { commitTimeoutMs: 300 }, limits: { shutdownTimeoutMs: 300 } })
    const dev = await provisionDevice(first, 'dist-x', 'dist-x-user')
    const topic = 'devices/dist-x/readings'
    await sendUntilAcked(first, dev, batch(1, 0, 10))
    const client = await connectDevice(first, dev)
    const locker = new pg.Client({ connectionString: first.dbUrl! })
    await locker.connect()
    try {
      await locker.query('BEGIN')
      await locker.query('LOCK TABLE positions IN EXCLUSIVE MODE')
      expect(await publishOrRefused(client, topic, batch(2, 10, 10))).toBe(false)
      await client.endAsync(true)
      await waitForLockWait(locker)
      // The broker goes away with the attempt still stuck; its statement is cancelled, nothing of it commits.
      await first.pg.stop()
      const cancelled = await locker.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity, pg_cancel_backend(pid)
         WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      )
      expect(cancelled.rows[0]?.n).toBeGreaterThan(0)
    } finally {
      await locker.query('ROLLBACK').catch(() => {})
      await locker.end()
    }
    tb = await startTestBroker('postgres', {}, { dataDir: first.dataDir, dbUrl: first.dbUrl! })
    await sendUntilAcked(tb, dev, batch(2, 10, 10))
    await sendUntilAcked(tb, dev, batch(3, 20, 10))
    const stored = await storedDistance(tb, 'dist-x')
    expect(stored.rows).toBe(29)
    expect(stored.m).toBeCloseTo(trackLength(30), 6)
  })
})

describe.each(['postgres', 'embedded'] as StoreKind[])('distance across a broker restart on %s', (store) => {
  let first: TestBroker | null = null
  let tb: TestBroker | null = null
  afterAll(async () => {
    await tb?.stop()
    // the first broker's store is the second's: dropped once, at the end
    await first?.stop()
  })

  it('continues from the newest committed fix: no stretch lost, none counted twice', async () => {
    first = await startTestBroker(store)
    const dev = await provisionDevice(first, 'dist-r', 'dist-r-user')
    let client = await connectDevice(first, dev)
    await client.publishAsync('devices/dist-r/readings', batch(1, 0, 15), { qos: 1 })
    await client.endAsync()
    await first.pg.stop()
    tb = await startTestBroker(store, {}, { dataDir: first.dataDir, ...(first.dbUrl ? { dbUrl: first.dbUrl } : {}) })
    client = await connectDevice(tb, dev)
    await client.publishAsync('devices/dist-r/readings', batch(2, 15, 15), { qos: 1 })
    // A redelivery of the first batch (new process: no seq window) derives nothing.
    await client.publishAsync('devices/dist-r/readings', batch(1, 0, 15), { qos: 1 })
    await client.endAsync()
    const stored = await storedDistance(tb, 'dist-r')
    expect(stored.rows).toBe(29)
    expect(stored.m).toBeCloseTo(trackLength(30), 6)
  })
})

// The durable ingest path end to end, on both stores: PUBACK only after commit, one row per sample whatever the
// path or redelivery, refusals with reasons, dead letters for batches that cannot be read.
import fs from 'node:fs'
import { encode } from 'cbor-x'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { migrationsDir } from '../../src/store/migrate.js'
import { metricValue } from '../helpers/metrics-text.js'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  nextMessage,
  provisionDevice,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'

const stores: StoreKind[] = ['postgres', 'embedded']

describe.each(stores)('ingest on %s', (store) => {
  let tb: TestBroker
  let dev: DeviceCreds
  let client: MqttClient
  let seq = 0
  // Each test uses its own time range so counts never interfere.
  let base = Date.now() - 3600_000

  const count = async (deviceId: string, table = 'samples', from = 0, to = Number.MAX_SAFE_INTEGER) => {
    const r = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${table} x JOIN devices d USING (device_key)
       WHERE d.device_id = $1 AND x.time >= to_timestamp($2 / 1000.0) AND x.time <= to_timestamp($3 / 1000.0)`,
      [deviceId, from, Math.min(to, 8.64e15)],
    )
    return r.rows[0]?.n ?? 0
  }
  const nextRange = (span = 60_000) => {
    base += span * 2
    return base
  }

  beforeAll(async () => {
    tb = await startTestBroker(store, { ingest: { deadLetterIntervalMs: 0 } })
    dev = await provisionDevice(tb, 'runner-1', 'carol')
    client = await connectDevice(tb, dev)
    await client.subscribeAsync('devices/runner-1/rejections', { qos: 1 })
  }, 120_000)
  afterAll(async () => {
    await client?.endAsync()
    await tb?.stop()
  })

  it('QoS 1: the rows are in the database when the PUBACK arrives', async () => {
    const t0 = nextRange()
    const samples = Array.from({ length: 10 }, (_, i) => ({ t: t0 + i * 1000, hr: 120 + i }))
    await client.publishAsync('devices/runner-1/readings', JSON.stringify({ seq: ++seq, samples }), { qos: 1 })
    // No waiting: the PUBACK itself is the promise that the rows are committed.
    expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(10)
  })

  it('CBOR batches are stored like JSON ones, positions in their own table', async () => {
    const t0 = nextRange()
    const payload = encode({
      seq: ++seq,
      samples: [
        { t: t0, hr: 130, spo2: 97 },
        { t: t0, lat: 52.5163, lon: 13.3777, alt: 34, acc: 4.8 },
        { t: t0 + 1000, lat: 52.51635, lon: 13.3777, acc: 5 },
      ],
    })
    await client.publishAsync('devices/runner-1/readings', payload, { qos: 1 })
    expect(await count('runner-1', 'positions', t0, t0 + 60_000)).toBe(2)
    // hr + spo2 + the derived distance of the second fix
    expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(3)
  })

  it('QoS 0 goes through the same path without an ack', async () => {
    const t0 = nextRange()
    await client.publishAsync(
      'devices/runner-1/readings',
      JSON.stringify({ seq: ++seq, samples: [{ t: t0, hr: 88 }] }),
      { qos: 0 },
    )
    await waitFor(async () => (await count('runner-1', 'samples', t0, t0 + 1000)) === 1)
  })

  it('a partly bad batch: valid samples stored and acked, each bad one refused with a reason', async () => {
    const t0 = nextRange()
    const s = ++seq
    const rejections: unknown[] = []
    const onMsg = (topic: string, p: Buffer) => {
      if (topic === 'devices/runner-1/rejections') rejections.push(JSON.parse(p.toString()))
    }
    client.on('message', onMsg)
    await client.publishAsync(
      'devices/runner-1/readings',
      JSON.stringify({
        seq: s,
        samples: [
          { t: t0, hr: 140 },
          { t: t0 + 1000, hr: 400 },
          { t: t0 + 2000, spo2: 'high' },
          { t: Date.now() + 3600_000, hr: 100 },
          { t: Date.now() - 30 * 86400_000, hr: 100 },
          { t: t0 + 3000, hr: 141 },
        ],
      }),
      { qos: 1 },
    )
    expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(2)
    await waitFor(() => rejections.length >= 4)
    client.off('message', onMsg)
    expect(rejections).toEqual(
      expect.arrayContaining([
        { seq: s, reason: 'out_of_range', field: 'hr', index: 1 },
        expect.objectContaining({ seq: s, reason: 'wrong_type', field: 'spo2', index: 2 }),
        expect.objectContaining({ seq: s, reason: 'future_timestamp', index: 3 }),
        expect.objectContaining({ seq: s, reason: 'too_old', index: 4 }),
      ]),
    )
  })

  it('redelivery (DUP flag, same seq and bytes) and a re-upload under a new seq each end as one row', async () => {
    const t0 = nextRange()
    const samples = Array.from({ length: 5 }, (_, i) => ({ t: t0 + i * 1000, hr: 100 + i }))
    const s = ++seq
    const payload = JSON.stringify({ seq: s, samples })
    await client.publishAsync('devices/runner-1/readings', payload, { qos: 1 })
    await client.publishAsync('devices/runner-1/readings', payload, { qos: 1, dup: true })
    await client.publishAsync('devices/runner-1/readings', JSON.stringify({ seq: ++seq, samples }), { qos: 1 })
    expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(5)
    const m = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_duplicates_total')
    expect(metricValue(m, 'pulsegate_ingest_duplicates_total', { where: 'seq_window' })).toBeGreaterThan(0)
    expect(metricValue(m, 'pulsegate_ingest_duplicates_total', { where: 'database' })).toBeGreaterThan(0)
    // The re-upload met stored rows: its plain INSERT failed whole and was re-run with ON CONFLICT DO NOTHING.
    const retries = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_conflict_retries_total')
    expect(metricValue(retries, 'pulsegate_ingest_conflict_retries_total')).toBeGreaterThan(0)
  })

  it('tracker and phone bridge uploading the same samples: one row each', async () => {
    const t0 = nextRange()
    const samples = Array.from({ length: 8 }, (_, i) => ({ t: t0 + i * 1000, hr: 90 + i, steps: i }))
    const bridge = await connectWithToken(tb, await token(tb, 'carol', 'bridge'), 'bridge:carol:phone')
    await Promise.all([
      client.publishAsync('devices/runner-1/readings', JSON.stringify({ seq: ++seq, samples }), { qos: 1 }),
      bridge.publishAsync('devices/runner-1/readings', JSON.stringify({ seq: 7, samples }), { qos: 1 }),
    ])
    expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(16)
    await bridge.endAsync()
  })

  it('malformed batches: a rejection, a dead-letter row with the raw bytes, no crash, the device stays connected', async () => {
    const before = (await tb.pg.db.query<{ n: number }>('SELECT count(*)::int AS n FROM dead_letters')).rows[0]?.n ?? 0
    const bad: (string | Buffer)[] = [
      '{"seq": 1, "samples": [',
      Buffer.from([0xa2, 0x63, 0x73, 0x65]), // truncated CBOR map
      Buffer.from([0xff, 0x00, 0x13, 0x37]),
      JSON.stringify({ samples: [] }),
      JSON.stringify({ seq: 1, samples: Array.from({ length: 5000 }, (_, i) => ({ t: i, hr: 60 })) }),
      encode({
        seq: 2,
        samples: [
          { t: Date.now(), hr: Number.NaN },
          { t: Date.now() + 1, hr: Number.POSITIVE_INFINITY },
        ],
      }),
    ]
    const got = nextMessage(client, 'devices/runner-1/rejections')
    for (const p of bad) await client.publishAsync('devices/runner-1/readings', p, { qos: 1 })
    const first = JSON.parse((await got).payload.toString())
    expect(first).toMatchObject({ seq: null, reason: expect.stringMatching(/malformed/) })
    const rows = await tb.pg.db.query<{ reason: string; payload: Uint8Array }>(
      'SELECT reason, payload FROM dead_letters ORDER BY id DESC LIMIT 5',
    )
    expect(rows.rows.length).toBe(5)
    expect((await tb.pg.db.query<{ n: number }>('SELECT count(*)::int AS n FROM dead_letters')).rows[0]?.n).toBe(
      before + 5,
    )
    expect(rows.rows.map((r) => r.reason).sort()).toEqual(
      ['malformed_json', 'malformed_cbor', 'unknown_format', 'bad_seq', 'too_many_samples'].sort(),
    )
    expect(Buffer.from(rows.rows.find((r) => r.reason === 'unknown_format')!.payload)).toEqual(
      Buffer.from([0xff, 0x00, 0x13, 0x37]),
    )
    expect(client.connected).toBe(true)
    const m = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_samples_rejected_total')
    expect(m).toMatch(/reason="wrong_type"/)
  })

  it('readings are consumed, not routed, unless an admin taps them (and then the admin gets them)', async () => {
    const routed: string[] = []
    const onPublish = (packet: { topic: string }) => {
      if (/^devices\/[^/]+\/(readings|status)$/.test(packet.topic)) routed.push(packet.topic)
    }
    tb.pg.broker.on('publish', onPublish)
    try {
      const t0 = nextRange()
      const send = (i: number) =>
        client.publishAsync(
          'devices/runner-1/readings',
          JSON.stringify({ seq: ++seq, samples: [{ t: t0 + i * 1000, hr: 100 + i }] }),
          { qos: 1 },
        )
      await send(0)
      expect(routed).toEqual([])
      // An admin on an unrelated filter does not turn routing on; one on a matching filter does.
      const admin = await connectWithToken(tb, await token(tb, 'ops', 'admin'), 'admin:ops:tap')
      await admin.subscribeAsync('users/#', { qos: 1 })
      await send(1)
      expect(routed).toEqual([])
      await admin.subscribeAsync('devices/+/readings', { qos: 1 })
      const got = nextMessage(admin, 'devices/runner-1/readings')
      await send(2)
      expect(JSON.parse((await got).payload.toString()).samples[0].hr).toBe(102)
      // Aedes emits 'publish' once delivery is done, which may come after the admin has the message.
      await waitFor(() => routed.length > 0)
      expect(routed).toEqual(['devices/runner-1/readings'])
      await admin.endAsync()
      await waitFor(() => tb.pg.broker.connectedClients === 1)
      await send(3)
      expect(routed).toEqual(['devices/runner-1/readings'])
      expect(await count('runner-1', 'samples', t0, t0 + 60_000)).toBe(4)
    } finally {
      tb.pg.broker.off('publish', onPublish)
    }
  })

  it('status messages are kept per device', async () => {
    await client.publishAsync(
      'devices/runner-1/status',
      JSON.stringify({ battery: 81, firmware: '2.4.1', buffered: 0 }),
      { qos: 1 },
    )
    const r = await tb.pg.db.query<{ status: { battery: number } | string }>(
      'SELECT status FROM device_status s JOIN devices d USING (device_key) WHERE d.device_id = $1',
      ['runner-1'],
    )
    const status = r.rows[0]?.status
    expect(typeof status === 'string' ? JSON.parse(status) : status).toMatchObject({ battery: 81 })
  })

  it('schema: the Timescale parts exist exactly when the store has TimescaleDB', async () => {
    const ext = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_extension WHERE extname = 'timescaledb'`,
    )
    if (store === 'embedded') {
      expect(ext.rows[0]?.n).toBe(1)
      const hyper = await tb.pg.db.query<{ hypertable_name: string }>(
        'SELECT hypertable_name FROM timescaledb_information.hypertables ORDER BY 1',
      )
      expect(hyper.rows.map((r) => r.hypertable_name)).toEqual(expect.arrayContaining(['positions', 'samples']))
      const jobs = await tb.pg.db.query<{ proc_name: string; hypertable_name: string }>(
        'SELECT proc_name, hypertable_name FROM timescaledb_information.jobs',
      )
      const names = jobs.rows.map((j) => `${j.proc_name}:${j.hypertable_name}`)
      expect(names).toEqual(
        expect.arrayContaining([
          'policy_compression:samples',
          'policy_retention:samples',
          'policy_compression:positions',
          'policy_retention:positions',
        ]),
      )
      expect(names.filter((n) => n.startsWith('policy_refresh_continuous_aggregate')).length).toBe(2)
      // The commit log goes with the samples' retention (migration 0020): a daily job, and what it deletes.
      const trim = await tb.pg.db.query<{ config: unknown }>(
        `SELECT config FROM timescaledb_information.jobs WHERE proc_name = 'pulsegate_trim_sample_commits'`,
      )
      expect(trim.rows.map((r) => r.config)).toEqual([{ drop_after: '90 days' }])
      await tb.pg.db.query(
        `INSERT INTO sample_commits (device_key, metric, commit_seq, t_min, t_max) VALUES
           (-7, 1, 1, now() - interval '92 days', now() - interval '91 days'),
           (-7, 1, 2, now() - interval '92 days', now() - interval '89 days')`,
      )
      await tb.pg.db.exec(`CALL pulsegate_trim_sample_commits(0, '{"drop_after": "90 days"}')`)
      const left = await tb.pg.db.query<{ seq: string }>(
        'SELECT commit_seq::text AS seq FROM sample_commits WHERE device_key = -7',
      )
      expect(left.rows.map((r) => r.seq)).toEqual(['2'])
      const caggs = await tb.pg.db.query<{ view_name: string }>(
        'SELECT view_name FROM timescaledb_information.continuous_aggregates ORDER BY 1',
      )
      expect(caggs.rows.map((r) => r.view_name)).toEqual(['samples_1h', 'samples_1m'])
      // The rollups really aggregate: refresh the minute view over our data and read it back.
      await tb.pg.db.exec(`CALL refresh_continuous_aggregate('samples_1m', now() - interval '1 day', now())`)
      const agg = await tb.pg.db.query<{ n: number }>('SELECT count(*)::int AS n FROM samples_1m WHERE metric = 1')
      expect(agg.rows[0]?.n).toBeGreaterThan(0)
    } else {
      expect(ext.rows[0]?.n).toBe(0)
      const t = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM information_schema.tables WHERE table_name IN ('samples','positions','dead_letters','devices')`,
      )
      expect(t.rows[0]?.n).toBe(4)
    }
    // Every migration file is applied, but the TimescaleDB ones only where the extension is.
    const versions = await tb.pg.db.query<{ version: string }>('SELECT version FROM schema_migrations ORDER BY 1')
    const files = fs.readdirSync(migrationsDir()).filter((f) => f.endsWith('.sql'))
    expect(versions.rows.map((r) => r.version)).toEqual(
      files.filter((f) => store === 'embedded' || !f.endsWith('.tsdb.sql')).sort(),
    )
  })
})

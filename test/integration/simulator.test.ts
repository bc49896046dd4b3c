// The device-swarm simulator end to end: a short marathon against a real broker on PostgreSQL (harness) and against
// the embedded store (--embedded-broker path). Every acked reading must be stored exactly once, the database must agree
// by its own count, devices cut mid-run must deliver what they buffered exactly once after reconnecting, and, when the
// broker runs an alert engine, injected anomalies must reach the users' apps.
import fs from 'node:fs'
import path from 'node:path'
import type { Client } from 'aedes'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../broker.config.js'
import { createLogger } from '../../src/log.js'
import type { Queryable } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import { startTestBroker, type TestBroker, tempDir } from '../helpers/harness.js'

/** The database's own count of a run's rows: scalar readings (derived distance excluded) and positions. */
async function countRows(db: Queryable, prefix: string, fromMs: number, toMs: number) {
  const r = await db.query<{ rows: number; distinct_rows: number }>(
    `WITH k AS (SELECT device_key FROM devices WHERE device_id LIKE $1)
     SELECT
       ((SELECT count(*) FROM samples WHERE device_key IN (SELECT device_key FROM k) AND metric <> 7
           AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0))
        + (SELECT count(*) FROM positions WHERE device_key IN (SELECT device_key FROM k)
           AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0)))::int AS rows,
       ((SELECT count(DISTINCT (device_key, metric, time)) FROM samples WHERE device_key IN (SELECT device_key FROM k)
           AND metric <> 7 AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0))
        + (SELECT count(DISTINCT (device_key, time)) FROM positions WHERE device_key IN (SELECT device_key FROM k)
           AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0)))::int AS distinct_rows`,
    [`${prefix}-%`, fromMs, toMs],
  )
  return { rows: Number(r.rows[0]?.rows ?? 0), distinct: Number(r.rows[0]?.distinct_rows ?? 0) }
}

function window(report: SwarmReport): [number, number] {
  return [Date.parse(report.startedAt), Date.parse(report.finishedAt)]
}

function expectClean(report: SwarmReport): void {
  const v = report.verification
  expect(v.status, JSON.stringify(v)).toBe('ok')
  expect(v.lost).toBe(0)
  expect(v.duplicates).toBe(0)
  expect(v.expected).toBe(report.readings.acked - report.readings.rejected)
  expect(v.found).toBe(v.expected)
  expect(report.readings.rejected).toBe(0)
  expect(report.samples.dropped).toBe(0)
  expect(report.samples.bufferedAtEnd).toBe(0)
  expect(report.connections.devices.failed).toBe(0)
  expect(report.connections.devices.refused).toBe(0)
}

describe('simulator: marathon swarm against PostgreSQL', () => {
  let tb: TestBroker
  let report: SwarmReport
  /** watches the broker kicks mid-run */
  const KICKS = 5
  const kicked: string[] = []
  /** kicked devices the broker saw subscribe again afterwards */
  const back = new Set<string>()

  beforeAll(async () => {
    tb = await startTestBroker('postgres')
    // Adaptive sampling: retained config waiting for three watches when they subscribe.
    for (const id of ['sim-u000001-w', 'sim-u000002-w', 'sim-u000003-w']) {
      tb.pg.publish(`devices/${id}/config`, JSON.stringify({ intervalMs: 500, batchEvery: 2 }), 1, true)
    }
    // The broker kicks five watches mid-run, 7 s in or, when the ramp is slower than that (a starved machine), as
    // soon as five are up: whatever they had in flight comes again and must dedupe. Up = the broker saw them
    // subscribe: a device subscribes on its CONNACK, so those are up on both ends (one registered but not yet
    // CONNACKed on its side would, kicked, be a failed connect, not a lost one). The swarm's drain does not end
    // before every link is up again, so each kick is followed by a reconnect whenever it lands.
    const clients = new Map<string, Client>()
    let kickDue = false
    const kick = () => {
      if (!kickDue || kicked.length > 0) return
      const up = [...clients.values()].filter((x) => x.connected)
      if (up.length < KICKS) return
      for (const c of up.slice(0, KICKS)) {
        kicked.push(c.id)
        c.close()
      }
    }
    tb.pg.broker.on('subscribe', (_subs, c: Client) => {
      if (!/^sim-u\d+-w$/.test(c.id)) return
      clients.set(c.id, c)
      if (kicked.includes(c.id)) back.add(c.id)
      setImmediate(kick) // not from inside Aedes' SUBSCRIBE handling
    })
    report = await runSwarm({
      broker: tb.pg,
      devices: 150,
      durationS: 12,
      rampPerS: 100,
      anomalyShare: 0.02,
      bridgeShare: 0.1,
      appShare: 0.2,
      // The upload ends when every link is up with nothing left to send (a condition); this only gives up on a
      // broker that never lets them in. On a starved machine the ramp's TLS handshakes alone took 30 s here.
      drainS: 60,
      // A tunnel: 10 % of the links drop at 4 s without a DISCONNECT and stay down 4 s.
      offline: { share: 0.1, atS: 4, forS: 4 },
      progress: false,
      onPhase: (phase) => {
        if (phase !== 'running') return
        setTimeout(() => {
          kickDue = true
          kick()
        }, 7000)
      },
    })
  }, 180_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('every acked reading is stored exactly once, and the database agrees by its own count', async () => {
    expectClean(report)
    expect(report.options.devices).toBe(150)
    expect(report.connections.devices.connected + report.connections.bridges.connected).toBe(report.options.users)
    expect(report.connections.bridges.connected).toBeGreaterThan(0)
    expect(report.latency.ackMs.count).toBe(report.messages.acked)
    expect(report.latency.ackMs.p99).toBeGreaterThan(0)
    // the steady window's acks are a part of all of them
    expect(report.latency.ackSteadyMs.count).toBeGreaterThan(0)
    expect(report.latency.ackSteadyMs.count).toBeLessThan(report.latency.ackMs.count)
    const [from, to] = window(report)
    const db = await countRows(tb.pg.db, 'sim', from - 3600_000, to)
    expect(db.distinct).toBe(db.rows)
    expect(db.rows).toBe(report.verification.found)
    expect(db.rows).toBe(report.readings.acked)
  })

  it('devices cut off mid-run buffer, reconnect, and deliver what they buffered exactly once', async () => {
    expect(report.offline.cuts).toBeGreaterThan(0)
    expect(report.offline.samplesBufferedWhileOffline).toBeGreaterThan(0)
    expect(kicked.length).toBe(KICKS)
    // The tunnel drops live links only (one still in its first handshake at 4 s, as on a loaded machine, is dropped
    // once it is up), and every one of them is back after it.
    expect(report.offline.cutsWhileUp).toBe(report.offline.cuts)
    expect(report.offline.recovered).toBe(report.offline.cuts)
    // Each cut and each kick ends in a reconnect; each kicked device came back.
    const reconnects = report.connections.devices.reconnects + report.connections.bridges.reconnects
    expect(reconnects).toBeGreaterThanOrEqual(report.offline.cuts + kicked.length)
    expect([...back].sort()).toEqual([...kicked].sort())
    expect(report.connections.devices.lost).toBeGreaterThanOrEqual(kicked.length)
    const cutAt = report.offline.cutAtMs ?? 0
    const r = await tb.pg.db.query<{ device_id: string; n: number; d: number }>(
      `SELECT d.device_id, count(*)::int AS n, count(DISTINCT (s.metric, s.time))::int AS d
         FROM samples s JOIN devices d USING (device_key)
        WHERE d.device_id = ANY($1) AND s.metric = 1
          AND s.time >= to_timestamp($2 / 1000.0) AND s.time < to_timestamp($3 / 1000.0)
        GROUP BY d.device_id`,
      [report.offline.deviceIds, cutAt + 500, cutAt + report.offline.forS * 1000 - 500],
    )
    // Heart rate sampled at 1 Hz while the link was down: all of it arrived, once.
    expect(r.rows.length).toBeGreaterThan(0)
    for (const row of r.rows) {
      expect(row.n).toBe(row.d)
      expect(row.n).toBeGreaterThanOrEqual(report.offline.forS - 2)
    }
  })

  it('obeys devices/{id}/config and serves the apps and the medic', () => {
    expect(report.messages.configApplied).toBeGreaterThanOrEqual(3)
    expect(report.connections.apps.connected).toBe(report.connections.apps.attempts)
    expect(report.connections.medics.connected).toBe(1)
    expect(report.outputs.liveReceived).toBeGreaterThan(0)
    // each app's copy (live alerts + delta sync) is what the database holds for its user (app-verify.ts)
    const a = report.appConvergence
    expect(a.status, JSON.stringify(a)).toBe('ok')
    expect([a.missing, a.extra, a.duplicated, a.incomplete]).toEqual([0, 0, 0, 0])
  })

  it('alerts for injected anomalies reach the subscribed apps', async () => {
    // every broker runs the alert engine: its metric missing is a failure here, not a reason to skip
    expect(tb.pg.metrics.registry.getSingleMetric('pulsegate_alerts_opened_total')).toBeDefined()
    // HR lost while running is the quickest rule (30 s without HR while moving); onset 2 s in.
    const r = await runSwarm({
      broker: tb.pg,
      idPrefix: 'alrt',
      devices: 16,
      durationS: 40,
      anomalyShare: 0.25,
      anomalyKinds: ['sensor_loss'],
      anomalyAtS: 2,
      bridgeShare: 0,
      appShare: 0,
      // The alerts are waited for as a condition (bounded by the drain), not for a fixed grace after the last PUBACK.
      drainS: 60,
      awaitAlerts: true,
      progress: false,
    })
    expectClean(r)
    expect(r.alerts.engine).toBe(true)
    expect(r.alerts.anomaliesWatched).toBe(4)
    expect(r.alerts.anomaliesAlerted).toBe(r.alerts.anomaliesWatched)
    expect(r.alerts.byKind['sensor_lost']).toBeGreaterThanOrEqual(4)
    expect(r.latency.alertMs.count).toBe(4)
    expect(r.alerts.medicReceived).toBeGreaterThanOrEqual(4)
  }, 120_000)
})

describe('simulator: --embedded-broker (embedded TimescaleDB)', () => {
  it('runs self-contained; the store, reopened afterwards, counts the same rows', async () => {
    const dataDir = tempDir()
    const config = loadConfig({ dataDir, logLevel: 'silent', jwt: { secret: 'test-secret-0123456789abcdef' } }, {})
    const report = await runSwarm({
      embeddedBroker: true,
      config,
      devices: 60,
      durationS: 8,
      scenario: 'wellness',
      format: 'json',
      bridgeShare: 0.2,
      drainS: 20,
      progress: false,
    })
    expectClean(report)
    expect(report.target.broker).toBe('embedded')
    expect(report.target.store).toBe('embedded')
    expect(report.provisioning.certsIssued).toBe(60)
    const db = await openEmbedded(dataDir, createLogger('silent'))
    try {
      const [from, to] = window(report)
      const n = await countRows(db, 'sim', from - 3600_000, to)
      expect(n.rows).toBe(report.readings.acked)
      expect(n.distinct).toBe(n.rows)
    } finally {
      await db.close()
    }
    // Certificates are cached under the data dir for the next run.
    expect(fs.existsSync(path.join(dataDir, 'sim', 'certs', 'sim-u000001-w.crt'))).toBe(true)
  }, 180_000)
})

describe('simulator: --lazy-devices', () => {
  it('a device samples only once its link is up, and every acked reading is stored once', async () => {
    const tb = await startTestBroker('postgres')
    // When the broker first saw each tracker (before its CONNACK: the device can only start sampling after it).
    const firstSeen = new Map<string, number>()
    tb.pg.broker.on('client', (c: Client) => {
      if (!firstSeen.has(c.id)) firstSeen.set(c.id, Date.now())
    })
    try {
      const report = await runSwarm({
        broker: tb.pg,
        devices: 40,
        durationS: 8,
        rampPerS: 10,
        anomalyShare: 0,
        bridgeShare: 0,
        appShare: 0,
        offline: null,
        drainS: 60,
        lazyDevices: true,
        progress: false,
      })
      expectClean(report)
      const first = await tb.pg.db.query<{ device_id: string; t: number }>(
        `SELECT d.device_id, (extract(epoch FROM min(s.time)) * 1000)::float8 AS t
           FROM samples s JOIN devices d USING (device_key) WHERE d.device_id LIKE 'sim-%' GROUP BY d.device_id`,
      )
      expect(first.rows.length).toBeGreaterThan(0)
      for (const r of first.rows) {
        const seen = firstSeen.get(r.device_id)
        expect(seen, r.device_id).toBeDefined()
        expect(r.t, r.device_id).toBeGreaterThanOrEqual(seen as number)
      }
    } finally {
      await tb.stop()
    }
  }, 180_000)
})

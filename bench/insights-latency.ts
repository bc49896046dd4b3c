// Streaming-rule recommendation latency, commit → app, for move_reminder (src/insights/rules/move.ts): N users who
// have sat still, worn, for 55 minutes (per-minute HR written set-wise, no steps) each publish one batch from their
// tracker (mTLS, QoS 1) at :50 or later of a local hour; the engine checks the users of each committed batch (coalesced
// for 1 s, src/insights/engine.ts onCommitted) and publishes the reminder on users/{uid}/recommendations to the user's
// app over WebSocket. Timed per user: PUBACK (the broker sends it after the batch committed: the commit point) → app
// receipt, and device publish → app receipt.
// A virtual clock: the engine's now and the readings' timestamps run up to 59 min ahead of the wall clock, to the next
// hh:50:05, so the bench does not wait for :50 (the broker under test allows that future skew, and its own engine is
// off: this engine, on the same broker, store and publisher, is the one hooked to the committed batches).
// Run: npm run build && node dist/bench/insights-latency.js [--users 200] [--store postgres|embedded]
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import type { MqttClient } from 'mqtt'
import { Registry as PromRegistry } from 'prom-client'
import { InsightsEngine } from '../src/insights/engine.js'
import { createInsightsMetrics } from '../src/insights/metrics.js'
import { createLogger } from '../src/log.js'
import { ConsentService } from '../src/ops/consent.js'
import { lateMorningZone } from '../simulators/wellness-history.js'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { provisionDevices, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { latencyHistogram, loadavg, summarizeMs } from './lib/stats.js'
import { connectApp, connectTracker } from './lib/clients.js'

const { values: a } = parseArgs({
  options: {
    users: { type: 'string', default: '200' },
    store: { type: 'string', default: 'postgres' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const USERS = num('users', a.users, 1)
const store = oneOf('store', a.store, ['postgres', 'embedded'])
const say = (s: string) => process.stderr.write(`[insights-latency] ${s}\n`)

// The virtual clock: the next hh:50:05 (now, if it is :50:05–:57 already).
const wall = Date.now()
const d = new Date(wall)
const intoHour = d.getUTCMinutes() * 60_000 + d.getUTCSeconds() * 1000 + d.getUTCMilliseconds()
const target = 50 * 60_000 + 5000
const shift = intoHour >= target && intoHour < 57 * 60_000 ? 0 : (target - intoHour + 3_600_000) % 3_600_000
const vnow = () => Date.now() + shift
const zone = lateMorningZone(vnow())

const pki = await ensureBenchCerts(USERS, { onProgress: (n, t) => say(`issued ${n}/${t} certs`) })
const bb = await startBenchBroker(store, pki, {
  insights: { enabled: false },
  ingest: { maxFutureSkewMs: 61 * 60_000 },
})
const pg = bb.instance
const devices = pki.devices.slice(0, USERS)
const userIds = devices.map((x) => x.userId)
try {
  await provisionDevices(bb, devices)
  const db = pg.db
  await db.query('UPDATE users SET time_zone = $2 WHERE user_id = ANY($1::text[])', [userIds, zone])
  await db.query(
    `INSERT INTO consents (user_id, purpose, granted, source, version)
     SELECT u, 'recommendations', true, 'cli', 1 FROM unnest($1::text[]) u`,
    [userIds],
  )
  // Still and worn for the 55 minutes before the virtual now: HR every minute, no steps.
  const v0 = vnow()
  await db.query(
    `INSERT INTO samples (time, device_key, metric, value)
     SELECT to_timestamp(($2::float8 - m * 60000) / 1000.0), d.device_key, 1, 68
     FROM devices d CROSS JOIN generate_series(1, 55) m WHERE d.device_id = ANY($1::text[])`,
    [devices.map((x) => x.deviceId), v0],
  )
  const log = createLogger('warn', 'insights-latency')
  const engine = new InsightsEngine({
    db,
    timescale: () => pg.timescale,
    consent: new ConsentService(db, { record: async () => {} }),
    preferences: pg.preferences,
    publisher: { publish: pg.publish },
    metrics: createInsightsMetrics(new PromRegistry()),
    log,
    settings: { ...pg.config.insights, enabled: true },
    now: vnow,
  })
  pg.ingest.onCommitted((b) => engine.onCommitted(b))

  // Apps over WebSocket, subscribed before anything is published.
  const received = new Map<string, number>()
  let onAll: () => void = () => undefined
  const all = new Promise<void>((r) => {
    onAll = r
  })
  const apps: MqttClient[] = []
  for (const dev of devices) {
    const app = await connectApp(pg, dev.userId)
    await app.subscribeAsync(`users/${dev.userId}/recommendations`, { qos: 1 })
    app.on('message', (_t, buf) => {
      const p = JSON.parse(buf.toString()) as { rule?: string }
      if (p.rule !== 'move_reminder' || received.has(dev.userId)) return
      received.set(dev.userId, performance.now())
      if (received.size === devices.length) onAll()
    })
    apps.push(app)
  }
  const ca = fs.readFileSync(pki.caCert)
  const trackers = await Promise.all(
    devices.map((dev) => connectTracker(`mqtts://127.0.0.1:${pg.ports.mqtts}`, dev, ca)),
  )
  say(`${USERS} apps and trackers connected; virtual clock +${Math.round(shift / 1000)} s, zone ${zone}`)

  // Every tracker publishes its batch at once (one burst: the engine sees them within its 1 s window).
  const published = new Map<string, number>()
  const acked = new Map<string, number>()
  const t0 = performance.now()
  await Promise.all(
    trackers.map((c, i) => {
      const dev = devices[i] as (typeof devices)[number]
      const t = vnow()
      const samples = [0, 1, 2, 3, 4].map((k) => ({ t: t - (4 - k) * 1000, hr: 68 }))
      published.set(dev.userId, performance.now())
      return c
        .publishAsync(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq: 1, samples }), { qos: 1 })
        .then(() => {
          acked.set(dev.userId, performance.now())
        })
    }),
  )
  // Bounded wait for the condition (every app has its reminder), not a sleep.
  await Promise.race([all, new Promise((r) => setTimeout(r, 60_000))])
  const wallS = (performance.now() - t0) / 1000
  const commitToApp = latencyHistogram()
  const publishToApp = latencyHistogram()
  const publishToAck = latencyHistogram()
  for (const [u, at] of received) {
    const ack = acked.get(u)
    const pub = published.get(u)
    if (ack !== undefined) commitToApp.recordValue(Math.max(1, Math.round((at - ack) * 1000)))
    if (pub !== undefined) publishToApp.recordValue(Math.max(1, Math.round((at - pub) * 1000)))
  }
  for (const [u, at] of acked) {
    const pub = published.get(u)
    if (pub !== undefined) publishToAck.recordValue(Math.max(1, Math.round((at - pub) * 1000)))
  }
  await Promise.all([...apps, ...trackers].map((c) => c.endAsync()))
  await engine.stop()
  const out = {
    bench: 'insights-latency',
    rule: 'move_reminder',
    store,
    timescale: pg.timescale,
    users: USERS,
    received: received.size,
    missing: USERS - received.size,
    commitToAppMs: summarizeMs(commitToApp),
    publishToAppMs: summarizeMs(publishToApp),
    publishToAckMs: summarizeMs(publishToAck),
    wallS: Math.round(wallS * 10) / 10,
    loadavg: loadavg(),
  }
  console.log(
    `move_reminder, ${USERS} users at once on ${store}: commit (PUBACK) → app p50 ${out.commitToAppMs.p50} ms, ` +
      `p99 ${out.commitToAppMs.p99} ms; publish → app p50 ${out.publishToAppMs.p50} ms, p99 ${out.publishToAppMs.p99} ms; ` +
      `publish → PUBACK p50 ${out.publishToAckMs.p50} ms; ${out.missing} missing; load ${out.loadavg}`,
  )
  console.log(JSON.stringify(out))
} finally {
  await bb.stop()
}
process.exit(0)

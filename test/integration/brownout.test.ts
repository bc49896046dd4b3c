// Brownout end to end: a real TCP proxy between the broker and PostgreSQL adds latency → commit latency rises → the
// broker publishes a retained devices/{id}/config with longer batches to the busy devices → the simulator's devices
// obey and the swarm sends fewer messages for the same readings → no QoS 1 publish is refused → once the latency is
// gone the normal config is back. Rates are compared per reading received (messages ÷ readings), which the config
// drives and a slow machine does not; messages/s are logged beside them.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, it } from 'vitest'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import {
  connectDevice,
  connectWithToken,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { type ProxiedDatabase, type TcpProxy, testDatabaseBehindProxy } from '../helpers/tcp-proxy.js'

const DEVICES = 12
const BROWNOUT_BATCH = 10
const NORMAL_BATCH = 1
/** each way: a statement's round trip alone is then twice this, well above the enter threshold */
const LATENCY_MS = 1000

let tb: TestBroker
let proxy: TcpProxy
let database: ProxiedDatabase

beforeAll(async () => {
  database = await testDatabaseBehindProxy()
  proxy = database.proxy
  tb = await startTestBroker(
    'postgres',
    {
      // Slow, never refused: commits may take seconds while the link is slow.
      ingest: { commitTimeoutMs: 120_000 },
      limits: {
        brownout: {
          enabled: true,
          sampleMs: 100,
          enter: { commitLatencyMs: 1500, queueRows: 10_000_000, forMs: 1000 },
          leave: { commitLatencyMs: 500, queueRows: 10_000_000, forMs: 1500 },
          batchEvery: BROWNOUT_BATCH,
          normalBatchEvery: NORMAL_BATCH,
          maxDevices: 1000,
          rankWindowMs: 2000,
        },
      },
    },
    { dbUrl: database.url },
  )
}, 60_000)
afterAll(async () => {
  proxy?.setLatency(0)
  await tb?.stop()
  await database?.close()
})

const metrics = () => tb.pg.metrics.registry.metrics()

async function counts() {
  const text = await metrics()
  return {
    at: performance.now(),
    messages: metricValue(text, 'pulsegate_ingest_batches_total'),
    readings: metricValue(text, 'pulsegate_ingest_samples_received_total'),
    refused: metricValue(text, 'pulsegate_ingest_refused_total'),
    active: metricValue(text, 'pulsegate_brownout_active'),
    entered: metricValue(text, 'pulsegate_brownout_transitions_total', { to: 'brownout' }),
    left: metricValue(text, 'pulsegate_brownout_transitions_total', { to: 'normal' }),
    throttled: metricValue(text, 'pulsegate_brownout_devices_throttled'),
  }
}

/** Messages per reading and messages/s from `from` until `readings` more readings have been received. */
async function measure(readings: number, timeoutMs: number) {
  const from = await counts()
  const to = await waitFor(async () => {
    const c = await counts()
    return c.readings - from.readings >= readings ? c : null
  }, timeoutMs)
  const messages = to.messages - from.messages
  return {
    perReading: messages / (to.readings - from.readings),
    perSecond: (messages * 1000) / (to.at - from.at),
    from,
    to,
  }
}

it('slow commits → retained longer-batch config → fewer messages per reading, none refused → config restored', async () => {
  // A device of the test's own, publishing beside the swarm: it must receive the config live.
  const probeCreds = await provisionDevice(tb, 'bo-probe', 'bo-probe-user')
  const probe: MqttClient = await connectDevice(tb, probeCreds)
  const probeConfigs: Record<string, unknown>[] = []
  probe.on('message', (topic, payload) => {
    if (topic === 'devices/bo-probe/config')
      probeConfigs.push(JSON.parse(payload.toString()) as Record<string, unknown>)
  })
  await probe.subscribeAsync('devices/bo-probe/config', { qos: 1 })
  let probeSeq = 0
  let probeAcked = 0
  const t0 = Date.now() - 600_000
  const probeTimer = setInterval(() => {
    const seq = ++probeSeq
    probe.publish(
      'devices/bo-probe/readings',
      JSON.stringify({ seq, samples: [{ t: t0 + seq * 1000, hr: 70 + (seq % 20) }] }),
      { qos: 1 },
      (err) => {
        if (!err) probeAcked++
      },
    )
  }, 250)

  const abort = new AbortController()
  let failure: unknown = null
  let running = false
  const swarm: Promise<SwarmReport> = runSwarm({
    broker: tb.pg,
    devices: DEVICES,
    scenario: 'wellness',
    durationS: 600, // an upper bound: the test aborts the run once its conditions are met
    rampPerS: 50,
    batch: NORMAL_BATCH,
    rateHz: 5,
    // A wide window: slow commits must not hold the devices back (backpressure would cut the rate without any config).
    inflight: 64,
    appShare: 0,
    anomalyShare: 0,
    bridgeShare: 0,
    dropOutShare: 0,
    drainS: 120,
    idPrefix: 'bo',
    progress: false,
    signal: abort.signal,
    onPhase: (phase) => {
      if (phase === 'running') running = true
    },
  })
  swarm.catch((err: unknown) => {
    failure = err
  })

  try {
    // Every swarm device connected and sending: the admin sees them (and their retained configs later) on the wire.
    await waitFor(() => running || failure !== null, 120_000, 100)
    expect(failure).toBeNull()
    await waitFor(async () => (await counts()).readings >= 300, 120_000, 100)
    const before = await measure(600, 120_000)
    expect(before.to.entered).toBe(0)

    // The database slows down.
    proxy.setLatency(LATENCY_MS)
    const inBrownout = await waitFor(
      async () => {
        const c = await counts()
        return c.active === 1 && c.throttled >= DEVICES + 1 ? c : null
      },
      60_000,
      100,
    )
    expect(inBrownout.entered).toBe(1)
    await waitFor(() => probeConfigs.some((c) => c.batchEvery === BROWNOUT_BATCH), 30_000)

    // Retained: a subscriber arriving now gets every swarm device's brownout config from the store.
    const admin = await connectWithToken(tb, await token(tb, 'bo-admin', 'admin'), 'admin:bo-admin')
    const retained = new Map<string, Record<string, unknown>>()
    admin.on('message', (topic, payload, packet) => {
      if (packet.retain) retained.set(topic, JSON.parse(payload.toString()) as Record<string, unknown>)
    })
    await admin.subscribeAsync('devices/+/config', { qos: 1 })
    const swarmConfigs = () => [...retained].filter(([t]) => /^devices\/bo-u\d+-w\/config$/.test(t))
    await waitFor(() => swarmConfigs().length >= DEVICES, 30_000)
    for (const [, c] of swarmConfigs()) expect(c.batchEvery).toBe(BROWNOUT_BATCH)
    await admin.endAsync()

    // The devices batch longer: wait until the batches sealed before the config are through (a full brownout batch
    // per device), then measure.
    await measure(DEVICES * BROWNOUT_BATCH * 2, 120_000)
    const during = await measure(DEVICES * BROWNOUT_BATCH * 4, 120_000)
    console.log(
      `brownout: ${before.perReading.toFixed(3)} → ${during.perReading.toFixed(3)} messages per reading, ` +
        `${before.perSecond.toFixed(1)} → ${during.perSecond.toFixed(1)} messages/s`,
    )
    // One message per sample before; about one per BROWNOUT_BATCH samples during (the probe keeps its own pace).
    expect(during.perReading).toBeLessThan(before.perReading / 3)
    expect(during.perSecond).toBeLessThan(before.perSecond)
    expect(during.to.active).toBe(1)

    // The database recovers: the normal config comes back, live to the probe.
    proxy.setLatency(0)
    const restored = await waitFor(
      async () => {
        const c = await counts()
        return c.active === 0 && c.left === 1 && c.throttled === 0 ? c : null
      },
      60_000,
      100,
    )
    await waitFor(() => probeConfigs.at(-1)?.batchEvery === NORMAL_BATCH, 30_000)
    expect(probeConfigs.at(-1)).toEqual({ batchEvery: NORMAL_BATCH })
    // The swarm is back to a message per sample once the batches sealed under the brownout are through.
    await measure(DEVICES * BROWNOUT_BATCH * 2, 120_000)
    const after = await measure(600, 120_000)
    expect(after.perReading).toBeGreaterThan(during.perReading * 2)
    expect(restored.refused).toBe(0)
  } finally {
    clearInterval(probeTimer)
    proxy.setLatency(0)
    abort.abort()
  }
  const report = await swarm
  await waitFor(() => probeAcked === probeSeq, 60_000)
  await probe.endAsync()

  // Nothing refused on the way, every acknowledged reading stored, and every device applied both configs.
  const end = await counts()
  expect(end.refused).toBe(0)
  expect(report.verification.status, JSON.stringify(report.verification)).toBe('ok')
  expect(report.verification.lost).toBe(0)
  expect(report.counters.configApplied).toBeGreaterThanOrEqual(2 * DEVICES)
}, 600_000)

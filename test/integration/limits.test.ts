// Per-client limits with real clients over real mTLS/TCP (src/limits, docs/limits.md). Rates are tiny (5 messages/s,
// burst 5) so every scenario is far over them whatever the machine's load; the tests wait for conditions and assert
// on counts, never on how long anything took.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildV2Header } from '../../src/transport/proxy-protocol.js'
import { RawMqtt } from '../helpers/raw-mqtt.js'
import {
  connackCode,
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'

const slow = { messagesPerSec: 5, messageBurst: 5, bytesPerSec: 0, byteBurst: 1 }

async function metric(tb: TestBroker, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await tb.pg.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name)
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => v.labels[k] === want))
    .reduce((s, v) => s + v.value, 0)
}

async function storedSamples(tb: TestBroker, deviceId: string): Promise<number> {
  const r = await tb.pg.db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = $1',
    [deviceId],
  )
  return r.rows[0]?.n ?? 0
}

const reading = (seq: number, t: number) => JSON.stringify({ seq, samples: [{ t, hr: 100 + (seq % 50) }] })

describe('publish rate limits', () => {
  let tb: TestBroker
  const clients: MqttClient[] = []
  const device = async (id: string): Promise<{ dev: DeviceCreds; c: MqttClient }> => {
    const dev = await provisionDevice(tb, id, `owner-${id}`)
    const c = await connectDevice(tb, dev)
    clients.push(c)
    return { dev, c }
  }

  beforeAll(async () => {
    tb = await startTestBroker('postgres', {
      limits: {
        rates: { device: slow, app: slow },
        // 90 over-limit publishes within 2 s, still going after it: only the endless flood below gets there.
        abuse: { factor: 10, windowMs: 2000 },
        maxTlsHandshakes: 1,
        // Eight devices through one slot on a loaded machine: no wait bound here (test/unit/handshake-cap.test.ts).
        maxHandshakeWaitMs: 0,
      },
    })
  }, 120_000)
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true)))
    await tb?.stop()
  }, 90_000)

  it('a QoS 1 flood is slowed, never refused: every message acked and stored; a normal device beside it too', async () => {
    const { c: flooder } = await device('flood-1')
    const { c: calm } = await device('calm-1')
    const before = await metric(tb, 'pulsegate_limit_throttled_total', { role: 'device' })
    const t0 = Date.now() - 600_000
    // 30 publishes written at once: 25 over the burst of 5.
    const flood = Array.from({ length: 30 }, (_, i) =>
      flooder.publishAsync('devices/flood-1/readings', reading(i + 1, t0 + i * 1000), { qos: 1 }),
    )
    const normal = Array.from({ length: 3 }, (_, i) =>
      calm.publishAsync('devices/calm-1/readings', reading(i + 1, t0 + i * 1000), { qos: 1 }),
    )
    await Promise.all([...flood, ...normal])
    expect(await metric(tb, 'pulsegate_limit_throttled_total', { role: 'device' })).toBeGreaterThan(before)
    // A PUBACK means committed: all 30 are there, once each, and the calm device's 3.
    expect(await storedSamples(tb, 'flood-1')).toBe(30)
    expect(await storedSamples(tb, 'calm-1')).toBe(3)
    expect(flooder.connected).toBe(true)
    expect(await metric(tb, 'pulsegate_limit_throttle_queue')).toBe(0)
  }, 60_000)

  it('QoS 0 over the limit is dropped and counted; the rest is stored', async () => {
    const { c } = await device('drop-1')
    const droppedBefore = await metric(tb, 'pulsegate_limit_dropped_total', { role: 'device' })
    const inBefore = await metric(tb, 'pulsegate_publish_in_total', { qos: '0' })
    const t0 = Date.now() - 500_000
    for (let i = 0; i < 50; i++) c.publish('devices/drop-1/readings', reading(i + 1, t0 + i * 1000), { qos: 0 })
    // Every packet is either passed on (counted in publish_in) or dropped by the limiter.
    const dropped = await waitFor(async () => {
      const d = (await metric(tb, 'pulsegate_limit_dropped_total', { role: 'device' })) - droppedBefore
      const passed = (await metric(tb, 'pulsegate_publish_in_total', { qos: '0' })) - inBefore
      return d + passed === 50 ? d : null
    }, 30_000).catch(() => 0)
    expect(dropped).toBeGreaterThan(0)
    await waitFor(async () => (await storedSamples(tb, 'drop-1')) === 50 - dropped, 30_000)
    expect(c.connected).toBe(true)
  }, 60_000)

  it('a client far over its limit for a whole window is disconnected', async () => {
    const { c } = await device('abuse-1')
    let seq = 0
    const t0 = Date.now() - 400_000
    const flood = setInterval(() => {
      for (let i = 0; i < 20 && c.connected; i++)
        c.publish('devices/abuse-1/readings', reading(++seq, t0 + seq), { qos: 0 })
    }, 5)
    try {
      await waitFor(() => !c.connected, 60_000)
    } finally {
      clearInterval(flood)
    }
    expect(await metric(tb, 'pulsegate_limit_disconnects_total', { role: 'device' })).toBe(1)
  }, 90_000)

  it('TLS handshakes beyond the cap wait their turn, and every device connects', async () => {
    const devs = await Promise.all(Array.from({ length: 8 }, (_, i) => provisionDevice(tb, `storm-${i}`, 'storm')))
    const waitsBefore = await metric(tb, 'pulsegate_tls_handshake_waits_total')
    // One handshake at a time: the last of the eight may wait for seven others, however slow the machine.
    const connected = await Promise.all(devs.map((d) => connectDevice(tb, d, { connectTimeout: 60_000 })))
    clients.push(...connected)
    expect(connected.every((c) => c.connected)).toBe(true)
    expect(await metric(tb, 'pulsegate_tls_handshake_waits_total')).toBeGreaterThan(waitsBefore)
    expect(await metric(tb, 'pulsegate_tls_handshakes_queued')).toBe(0)
  }, 60_000)
})

describe('connection limits', () => {
  let tb: TestBroker
  const here = '127.0.0.1'

  beforeAll(async () => {
    tb = await startTestBroker('postgres', {
      limits: { maxConnectionsPerIp: 3, flapping: { maxConnects: 3, windowMs: 600_000, banMs: 600_000 } },
    })
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  }, 90_000)

  it('the (N+1)th connection from one address gets CONNACK 3; a freed slot is reusable', async () => {
    const jwt = await token(tb, 'ipuser', 'app')
    const three = await Promise.all([1, 2, 3].map((n) => connectWithToken(tb, jwt, `app:ipuser:${n}`)))
    expect(tb.pg.limits.connect.openFrom(here)).toBe(3)
    expect(await connackCode(connectWithToken(tb, jwt, 'app:ipuser:4'))).toBe(3)
    expect(await metric(tb, 'pulsegate_limit_connect_refusals_total', { reason: 'ip_connection_limit' })).toBe(1)
    await three[0]?.endAsync()
    await waitFor(() => tb.pg.limits.connect.openFrom(here) === 2, 30_000)
    const fifth = await connectWithToken(tb, jwt, 'app:ipuser:5')
    await Promise.all([fifth.endAsync(), three[1]?.endAsync(), three[2]?.endAsync()])
    await waitFor(() => tb.pg.limits.connect.openFrom(here) === 0, 30_000)
  }, 90_000)

  it('flapping: after N sessions within the window the client id is banned (CONNACK 5); others are not', async () => {
    const jwt = await token(tb, 'flapper', 'app')
    for (let i = 0; i < 3; i++) {
      const c = await connectWithToken(tb, jwt, 'app:flapper:1')
      await c.endAsync()
      await waitFor(() => tb.pg.limits.connect.openFrom(here) === 0, 30_000)
    }
    // The ban is decided when the Nth session ends (clientDisconnect), which may come after the socket closed.
    await waitFor(async () => (await metric(tb, 'pulsegate_limit_flapping_bans_total')) === 1, 30_000)
    expect(await connackCode(connectWithToken(tb, jwt, 'app:flapper:1'))).toBe(5)
    // Still banned: refused again, without a second ban.
    expect(await connackCode(connectWithToken(tb, jwt, 'app:flapper:1'))).toBe(5)
    expect(await metric(tb, 'pulsegate_limit_connect_refusals_total', { reason: 'flapping_ban' })).toBe(2)
    expect(await metric(tb, 'pulsegate_limit_banned')).toBe(1)
    expect(await metric(tb, 'pulsegate_limit_flapping_bans_total')).toBe(1)
    expect(await connackCode(connectWithToken(tb, jwt, 'app:flapper:2'))).toBe(0)
  }, 90_000)
})

describe('connection limits behind a load balancer (PROXY protocol)', () => {
  let tb: TestBroker
  const raws: RawMqtt[] = []

  beforeAll(async () => {
    // The test itself is the load balancer: its connections come from 127.0.0.1 with the clients' addresses in front.
    tb = await startTestBroker('postgres', {
      limits: { maxConnectionsPerIp: 2 },
      proxy: { mqtt: 'required', trusted: ['127.0.0.1/32'] },
    })
  }, 120_000)
  afterAll(async () => {
    for (const r of raws) r.end()
    await tb?.stop()
  }, 90_000)

  const connackFrom = async (sourceAddress: string, n: number, jwt: string): Promise<number> => {
    const preamble = buildV2Header({
      addresses: { family: 'IPv4', sourceAddress, sourcePort: 40_000 + n, destAddress: '127.0.0.1', destPort: 1883 },
    })
    const raw = await RawMqtt.open({ port: tb.pg.ports.mqtt as number, preamble })
    raws.push(raw)
    raw.connect({ clientId: `app:behindlb:${n}`, clean: true, password: jwt })
    return (await raw.next('connack')).returnCode ?? -1
  }

  it('counts each client address the balancer reports, not the balancer’s own', async () => {
    const jwt = await token(tb, 'behindlb', 'app')
    const before = await metric(tb, 'pulsegate_limit_connect_refusals_total', { reason: 'ip_connection_limit' })
    expect(await connackFrom('198.51.100.7', 1, jwt)).toBe(0)
    expect(await connackFrom('198.51.100.7', 2, jwt)).toBe(0)
    expect(await connackFrom('198.51.100.7', 3, jwt)).toBe(3)
    // another client behind the same balancer is not held to the first one's limit
    expect(await connackFrom('198.51.100.8', 4, jwt)).toBe(0)
    expect(tb.pg.limits.connect.openFrom('198.51.100.7')).toBe(2)
    expect(tb.pg.limits.connect.openFrom('198.51.100.8')).toBe(1)
    expect(tb.pg.limits.connect.openFrom('127.0.0.1')).toBe(0)
    expect(await metric(tb, 'pulsegate_limit_connect_refusals_total', { reason: 'ip_connection_limit' })).toBe(
      before + 1,
    )
  }, 90_000)
})

// A bounded fuzz run against a live broker: mutated MQTT packets on raw sockets (before and after a valid CONNECT)
// and mutated CBOR/JSON readings from an authenticated device, while a well-behaved device publishes alongside.
// Afterwards the broker is up (/healthz, a fresh connect), its heap after GC has not grown beyond a generous bound,
// and every reading the well-behaved device got a PUBACK for is in the database. Seeded fast-check runs with a fixed
// number of cases, so a failure reproduces (its seed is in the message; PULSEGATE_FUZZ_SEED=<seed> to re-run).
import net from 'node:net'
import v8 from 'node:v8'
import vm from 'node:vm'
import { encode } from 'cbor-x'
import fc from 'fast-check'
import mqttPacket, { type Packet } from 'mqtt-packet'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  connectDevice,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

const SEED = Number(process.env.PULSEGATE_FUZZ_SEED ?? 16_092)
const MQTT_CASES = Number(process.env.PULSEGATE_FUZZ_MQTT_CASES ?? 300)
const PAYLOAD_CASES = Number(process.env.PULSEGATE_FUZZ_PAYLOAD_CASES ?? 300)
/** heapUsed after GC may grow this much over the run (caches warming, pools): a leak per case would exceed it */
const HEAP_GROWTH_BOUND = 48 * 1024 * 1024

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

let tb: TestBroker
let steady: DeviceCreds
let noisy: DeviceCreds
let appJwt: string

beforeAll(async () => {
  tb = await startTestBroker('postgres', { limits: { maxPacketBytes: 64 * 1024 } })
  steady = await provisionDevice(tb, 'fz-steady', 'fz-user-1')
  noisy = await provisionDevice(tb, 'fz-noisy', 'fz-user-2')
  appJwt = await token(tb, 'fz-user-3', 'app')
}, 60_000)
afterAll(async () => {
  await tb?.stop()
})

function heapAfterGc(): number {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

// ---- MQTT packets ----

const gen = (p: Partial<Packet> & { cmd: Packet['cmd'] }) => mqttPacket.generate(p as Packet)

function connectPacket(clientId: string, password?: string): Buffer {
  return gen({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    clientId,
    keepalive: 30,
    ...(password ? { username: 'jwt', password: Buffer.from(password) } : {}),
  })
}

const SEEDS_AFTER_CONNECT: Buffer[] = [
  gen({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'users/fz-user-3/alerts', qos: 1 }] }),
  gen({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: 'devices/+/readings', qos: 0 }] }),
  gen({
    cmd: 'publish',
    topic: 'users/fz-user-3/preferences',
    payload: Buffer.from('{"units":"metric"}'),
    qos: 1,
    messageId: 3,
    retain: false,
    dup: false,
  }),
  gen({
    cmd: 'publish',
    topic: 'users/fz-user-3/sync/request',
    payload: Buffer.from('{}'),
    qos: 0,
    retain: false,
    dup: false,
  }),
  gen({ cmd: 'unsubscribe', messageId: 4, unsubscriptions: ['users/fz-user-3/alerts'] }),
  gen({ cmd: 'pingreq' }),
  gen({ cmd: 'puback', messageId: 9 }),
  gen({ cmd: 'pubrel', messageId: 9 }),
]

/** One mutation of a byte string: flip, overwrite, insert, delete, truncate, or repeat a slice. */
const mutation = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({
    kind: fc.constant('set' as const),
    at: fc.nat(),
    byte: fc.constantFrom(0x00, 0x7f, 0x80, 0xff, 0x30, 0x10),
  }),
  fc.record({
    kind: fc.constant('insert' as const),
    at: fc.nat(),
    bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }),
  }),
  fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({
    kind: fc.constant('repeat' as const),
    at: fc.nat(),
    n: fc.integer({ min: 1, max: 16 }),
    times: fc.integer({ min: 2, max: 4 }),
  }),
)
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never

function mutate(input: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(input)
  for (const m of ms) {
    const at = b.length === 0 ? 0 : m.at % b.length
    if (m.kind === 'flip' && b.length > 0) b[at] = (b[at] as number) ^ (1 << m.bit)
    else if (m.kind === 'set' && b.length > 0) b[at] = m.byte
    else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), Buffer.from(m.bytes), b.subarray(at)])
    else if (m.kind === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.n)])
    else if (m.kind === 'truncate') b = b.subarray(0, at)
    else if (m.kind === 'repeat') {
      const slice = b.subarray(at, at + m.n)
      b = Buffer.concat([b.subarray(0, at), ...Array.from({ length: m.times }, () => slice), b.subarray(at + m.n)])
    }
  }
  return b
}

/** Writes `bytes` (split at `cut`), half-closes, and resolves when the broker has closed the connection. */
function throwAt(port: number, bytes: Buffer, cut: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      const at = bytes.length === 0 ? 0 : cut % (bytes.length + 1)
      s.write(bytes.subarray(0, at))
      s.end(bytes.subarray(at))
    })
    const timer = setTimeout(() => {
      s.destroy()
      reject(new Error('the broker kept a fuzzed connection open 20 s after our FIN'))
    }, 20_000)
    s.on('data', () => {})
    s.on('error', () => {})
    s.on('close', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

// ---- readings payloads ----

/** Resolves on the PUBACK (or at once for QoS 0), or when the broker drops the connection instead. */
function publishOrClosed(c: MqttClient, payload: Buffer, qos: 0 | 1): Promise<void> {
  return new Promise((resolve) => {
    const onClose = () => resolve()
    c.once('close', onClose)
    c.publish('devices/fz-noisy/readings', payload, { qos }, () => {
      c.off('close', onClose)
      resolve()
    })
  })
}

const NOW = Date.now()
const sample = fc.record(
  {
    t: fc.integer({ min: NOW - 3_600_000, max: NOW }),
    hr: fc.oneof(fc.integer({ min: 25, max: 250 }), fc.double(), fc.string({ maxLength: 4 })),
    spo2: fc.integer({ min: 40, max: 110 }),
    lat: fc.double({ min: -91, max: 91 }),
    lon: fc.double({ min: -181, max: 181 }),
  },
  { requiredKeys: ['t'] },
)
const batchPayload = fc
  .record({
    seq: fc.oneof(fc.nat(), fc.anything()),
    samples: fc.oneof(fc.array(sample, { maxLength: 20 }), fc.anything()),
  })
  .chain((b) => fc.constantFrom(Buffer.from(encode(b)), Buffer.from(JSON.stringify(b) ?? '{}')))
const readingsCase = fc.record({
  payload: fc.tuple(batchPayload, fc.array(mutation, { maxLength: 3 })).map(([p, ms]) => mutate(p, ms)),
  qos: fc.constantFrom(0 as const, 1 as const),
})

it('survives mutated MQTT packets and readings, keeps every acked reading of a well-behaved device', async () => {
  const port = tb.pg.ports.mqtt as number
  // Warm up what the run touches once (TLS, registry caches, the pools), then take the heap baseline.
  const steadyClient: MqttClient = await connectDevice(tb, steady)
  let noisyClient: MqttClient = await connectDevice(tb, noisy)
  await steadyClient.publishAsync(
    'devices/fz-steady/readings',
    JSON.stringify({ seq: 0, samples: [{ t: NOW - 7_200_000, hr: 60 }] }),
    { qos: 1 },
  )
  let steadyAcked = 1
  await throwAt(port, connectPacket('app:fz-user-3:warm', appJwt), 0)
  const heapBefore = heapAfterGc()

  // The well-behaved device: one QoS 1 batch of 5 heart-rate samples at a time, distinct times, until told to stop.
  let running = true
  let steadyError: unknown = null
  const steadyLoop = (async () => {
    for (let seq = 1; running; seq++) {
      const samples = Array.from({ length: 5 }, (_, k) => ({ t: NOW - 7_200_000 + seq * 5000 + k * 1000, hr: 60 + k }))
      await steadyClient.publishAsync('devices/fz-steady/readings', JSON.stringify({ seq, samples }), { qos: 1 })
      steadyAcked += samples.length
    }
  })().catch((err: unknown) => {
    steadyError = err
  })

  try {
    // Raw sockets: a mutated packet stream, sometimes after a valid authenticated CONNECT.
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.array(fc.constantFrom(...SEEDS_AFTER_CONNECT.keys()), { minLength: 1, maxLength: 4 }),
        fc.array(mutation, { minLength: 1, maxLength: 4 }),
        fc.nat(),
        fc.nat(),
        async (authenticated, picks, ms, cut, id) => {
          const head = authenticated ? connectPacket(`app:fz-user-3:f${id % 1000}`, appJwt) : Buffer.alloc(0)
          const body = Buffer.concat(
            authenticated
              ? picks.map((i) => SEEDS_AFTER_CONNECT[i] as Buffer)
              : [connectPacket(`fz-${id % 1000}`), ...picks.map((i) => SEEDS_AFTER_CONNECT[i] as Buffer)],
          )
          await throwAt(port, Buffer.concat([head, mutate(body, ms)]), cut)
        },
      ),
      { seed: SEED, numRuns: MQTT_CASES },
    )

    // An authenticated device sending mutated readings: refused or stored, never a crash; it reconnects if dropped.
    await fc.assert(
      fc.asyncProperty(readingsCase, async ({ payload, qos }) => {
        if (!noisyClient.connected) {
          noisyClient.end(true)
          noisyClient = await connectDevice(tb, noisy)
        }
        await publishOrClosed(noisyClient, payload, qos)
      }),
      { seed: SEED + 1, numRuns: PAYLOAD_CASES },
    )
  } finally {
    running = false
    await steadyLoop
  }
  expect(steadyError).toBeNull()

  // Still up: health, a fresh connect, and the steady device's every acked reading stored.
  const health = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/healthz`)
  expect(health.status).toBe(200)
  const fresh = await connectDevice(tb, await provisionDevice(tb, 'fz-fresh', 'fz-user-4'))
  await fresh.publishAsync(
    'devices/fz-fresh/readings',
    JSON.stringify({ seq: 1, samples: [{ t: NOW - 60_000, hr: 70 }] }),
    { qos: 1 },
  )
  await fresh.endAsync()
  const stored = await tb.pg.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = 'fz-steady' AND s.metric = 1`,
  )
  expect(stored.rows[0]?.n).toBe(steadyAcked)
  await steadyClient.endAsync()
  noisyClient.end(true)

  // The fuzzing reached the broker's checks (not only the TCP layer): guard cuts, parser errors and rejections.
  const text = await tb.pg.metrics.registry.metrics()
  expect(metricValue(text, 'pulsegate_ingest_batches_total')).toBeGreaterThan(PAYLOAD_CASES / 2)
  expect(metricValue(text, 'pulsegate_packet_guard_cuts_total')).toBeGreaterThan(0)
  expect(metricValue(text, 'pulsegate_client_errors_total')).toBeGreaterThan(0)
  for (const reason of ['malformed_cbor', 'malformed_json', 'bad_seq', 'out_of_range'])
    expect(metricValue(text, 'pulsegate_ingest_samples_rejected_total', { reason }), reason).toBeGreaterThan(0)

  // Memory: every fuzzed connection is gone (a condition), then the heap after GC is within the bound.
  await waitFor(
    () => Object.keys((tb.pg.broker as unknown as { clients: Record<string, unknown> }).clients).length === 0,
    30_000,
  )
  const growth = heapAfterGc() - heapBefore
  console.log(
    `fuzz: heapUsed after GC grew ${(growth / 1024 / 1024).toFixed(1)} MiB over ${MQTT_CASES + PAYLOAD_CASES} cases (seed ${SEED})`,
  )
  expect(growth).toBeLessThan(HEAP_GROWTH_BOUND)
}, 120_000)

// bench/signed.ts — what signed (COSE_Sign1, ES256) and encrypted (COSE_Encrypt0, A256GCM around the Sign1) readings
// cost the broker (docs/device-signing.md).
//
// Part 1, verification cost: stage 0 of the pipeline alone (src/pipeline/envelope.ts openEnvelope) over
// `--iterations` pre-built batches of `--batch` heart-rate samples, one after the other on this thread: µs per batch
// for a plain batch (the policy check only), a Sign1 (ES256 verify with the device's parsed public key) and an
// Encrypt0 (decrypt, then verify). The decode/validate/commit work that follows is the same for all three.
// Part 2, throughput in one run: pulsegate in this process on a fresh PostgreSQL database; `--devices` devices
// registered with their certificates, each relayed by its own bridge (JWT over plain MQTT); per phase (plain, signed,
// encrypted) every bridge publishes pre-built QoS 1 batches with at most `--inflight` unacknowledged, as fast as
// PUBACKs come back, for `--duration` s. All batches are signed/encrypted before the phases, so the load generator
// (same process) does the same work in every phase and the ratio is the broker's. Then the database is checked: each
// phase's acked samples must all be stored.
//
//   npm run build
//   node dist/bench/signed.js --devices 20 --duration 5 --batch 10
// Prints a summary, then one line of JSON with every figure.
import fs from 'node:fs'
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'
import { encode } from 'cbor-x'
import mqtt, { type MqttClient } from 'mqtt'
import { loadavg, round } from './lib/stats.js'
import { num, printHeaderAndExit } from './lib/args.js'
import { startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { newContentKey } from '../src/identity/content-key.js'
import { certificateKey } from '../src/identity/device-keys.js'
import { encryptBatch, openEnvelope, signBatch } from '../src/pipeline/envelope.js'
import { runRpc } from '../src/transport/http-routes.js'

const { values: args } = parseArgs({
  options: {
    devices: { type: 'string', default: '20' },
    duration: { type: 'string', default: '5' },
    batch: { type: 'string', default: '10' },
    inflight: { type: 'string', default: '4' },
    iterations: { type: 'string', default: '2000' },
    pool: { type: 'string', default: '600' },
    help: { type: 'boolean', default: false },
  },
})
if (args.help) printHeaderAndExit(import.meta.url)
const DEVICES = num('devices', args.devices, 1)
const DURATION_S = num('duration', args.duration, 1)
const BATCH = num('batch', args.batch, 1)
const INFLIGHT = num('inflight', args.inflight, 1)
const ITERATIONS = num('iterations', args.iterations, 1)
const POOL = num('pool', args.pool, 1)

type Phase = 'plain' | 'signed' | 'encrypted'
const PHASES: Phase[] = ['plain', 'signed', 'encrypted']

const batchBytes = (seq: number, t0: number) =>
  Buffer.from(
    encode({ seq, samples: Array.from({ length: BATCH }, (_, j) => ({ t: t0 + j * 1000, hr: 90 + (j % 60) })) }),
  )

async function verifyCost(): Promise<Record<Phase, number>> {
  const dev = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const contentKey = newContentKey()
  const keys = { verifyKey: dev.publicKey, signedRequired: false, contentKey }
  const base = Date.now() - 3600_000
  const built: Record<Phase, Buffer[]> = { plain: [], signed: [], encrypted: [] }
  for (let i = 0; i < ITERATIONS; i++) {
    const plain = batchBytes(i, base + i * BATCH * 1000)
    const signed = await signBatch(plain, 'bench-dev', dev.privateKey)
    built.plain.push(plain)
    built.signed.push(signed)
    built.encrypted.push(await encryptBatch(signed, 'bench-dev', contentKey))
  }
  const out = { plain: 0, signed: 0, encrypted: 0 }
  for (const p of PHASES) {
    const xs = built[p]
    for (let i = 0; i < Math.min(200, xs.length); i++) await openEnvelope(xs[i] as Buffer, 'bench-dev', keys) // warm-up
    const t = performance.now()
    for (const x of xs) await openEnvelope(x, 'bench-dev', keys)
    out[p] = round(((performance.now() - t) * 1000) / xs.length, 1)
  }
  return out
}

async function main(): Promise<void> {
  const cost = await verifyCost()
  console.log(
    `verification per batch of ${BATCH} samples: plain ${cost.plain} µs, signed ${cost.signed} µs, encrypted ${cost.encrypted} µs`,
  )

  const pki = await ensureBenchCerts(DEVICES)
  const b = await startBenchBroker('postgres', pki)
  const result: Record<string, unknown> = { verifyUs: cost, devices: DEVICES, batch: BATCH, inflight: INFLIGHT }
  const clients: MqttClient[] = []
  try {
    const pg = b.instance
    const devices = pki.devices.slice(0, DEVICES).map((d) => ({
      ...d,
      certPem: fs.readFileSync(d.certPath, 'utf8'),
      key: crypto.createPrivateKey(fs.readFileSync(d.keyPath, 'utf8')),
      contentKey: null as Buffer | null,
    }))
    await runRpc(pg.registry, {
      op: 'registerDevices',
      devices: devices.map((d) => ({
        deviceId: d.deviceId,
        userId: d.userId,
        fingerprint: d.fingerprint,
        certPem: d.certPem,
      })),
    })
    for (const d of devices) {
      const r = (await runRpc(
        pg.registry,
        { op: 'provisionContentKey', deviceId: d.deviceId },
        { config: pg.config, db: pg.db },
      )) as {
        contentKey: string
      }
      d.contentKey = Buffer.from(r.contentKey, 'base64')
      if (!certificateKey(d.certPem)) throw new Error(`certificate of ${d.deviceId} does not parse`)
    }
    // Pre-built: every batch of every phase, distinct timestamps and seqs per device.
    const base = Date.now() - 8 * 3600_000
    const pools = new Map<string, Record<Phase, Buffer[]>>()
    const prepStart = performance.now()
    for (const d of devices) {
      const pool: Record<Phase, Buffer[]> = { plain: [], signed: [], encrypted: [] }
      for (const [pi, p] of PHASES.entries()) {
        for (let i = 0; i < POOL; i++) {
          const k = pi * POOL + i
          const plain = batchBytes(k + 1, base + k * BATCH * 1000)
          if (p === 'plain') pool[p].push(plain)
          else {
            const signed = await signBatch(plain, d.deviceId, d.key)
            pool[p].push(p === 'signed' ? signed : await encryptBatch(signed, d.deviceId, d.contentKey as Buffer))
          }
        }
      }
      pools.set(d.deviceId, pool)
    }
    const prepMs = performance.now() - prepStart
    for (const d of devices) {
      const jwt = await pg.tokens.sign({ sub: d.userId, role: 'bridge', ttl: 3600 })
      clients.push(
        await mqtt.connectAsync(`mqtt://127.0.0.1:${pg.ports.mqtt}`, {
          clientId: `bridge:${d.userId}:bench`,
          username: 'jwt',
          password: jwt,
          reconnectPeriod: 0,
          protocolVersion: 4,
        }),
      )
    }
    const phases: Record<string, unknown> = {}
    for (const p of PHASES) {
      let acked = 0
      let exhausted = 0
      const until = performance.now() + DURATION_S * 1000
      const started = performance.now()
      const cpu0 = process.cpuUsage()
      await Promise.all(
        devices.map(async (d, i) => {
          const c = clients[i] as MqttClient
          const pool = (pools.get(d.deviceId) as Record<Phase, Buffer[]>)[p]
          let next = 0
          const lane = async () => {
            while (performance.now() < until) {
              const payload = pool[next++]
              if (!payload) {
                exhausted++
                return
              }
              await c.publishAsync(`devices/${d.deviceId}/readings`, payload, { qos: 1 })
              acked++
            }
          }
          await Promise.all(Array.from({ length: INFLIGHT }, lane))
        }),
      )
      const s = (performance.now() - started) / 1000
      const cpu = process.cpuUsage(cpu0)
      phases[p] = {
        batches: acked,
        batchesPerS: round(acked / s, 0),
        samplesPerS: round((acked * BATCH) / s, 0),
        cpuPct: round(((cpu.user + cpu.system) / 1e6 / s) * 100, 0),
        poolExhausted: exhausted,
      }
    }
    const rows = await pg.db.query<{ n: number }>('SELECT count(*)::int AS n FROM samples')
    const signedRows = await pg.db.query<{ n: number; enc: number }>(
      'SELECT count(*)::int AS n, count(*) FILTER (WHERE encrypted)::int AS enc FROM signed_batches',
    )
    const total = PHASES.reduce((n, p) => n + (phases[p] as { batches: number }).batches, 0)
    const rate = (p: Phase) => (phases[p] as { batchesPerS: number }).batchesPerS
    Object.assign(result, {
      phases,
      ratioSignedPlain: round(rate('signed') / rate('plain'), 2),
      ratioEncryptedPlain: round(rate('encrypted') / rate('plain'), 2),
      prepMs: round(prepMs, 0),
      stored: rows.rows[0]?.n,
      expected: total * BATCH,
      signedBatchRows: signedRows.rows[0],
      loadavg: loadavg(),
    })
    for (const p of PHASES) {
      const x = phases[p] as { batchesPerS: number; samplesPerS: number; cpuPct: number }
      console.log(`${p.padEnd(9)} ${x.batchesPerS} batches/s, ${x.samplesPerS} samples/s (process CPU ${x.cpuPct} %)`)
    }
    console.log(
      `signed/plain ${result.ratioSignedPlain}, encrypted/plain ${result.ratioEncryptedPlain}; stored ${result.stored} of ${result.expected} acked samples; load ${loadavg()}`,
    )
    if (result.stored !== result.expected) process.exitCode = 1
  } finally {
    await Promise.allSettled(clients.map((c) => c.endAsync()))
    await b.stop()
  }
  console.log(JSON.stringify(result))
}

await main()

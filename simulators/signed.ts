// `pulsegate simulate --signed`: phone bridges relay batches signed (COSE_Sign1) and, with --encrypted, encrypted
// (COSE_Encrypt0) by their users' trackers; a share of the bridges is malicious and alters values or replays one
// device's batch on another device's topic. The report counts, per kind, what was sent, what the broker refused and
// what the DATABASE holds of it (queried, not inferred): every forged batch must be refused and none stored, and every
// genuine acked sample stored. docs/device-signing.md describes the threat model this plays.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Sign1 } from '@auth0/cose'
import { decode, encode } from 'cbor-x'
import mqtt, { type MqttClient } from 'mqtt'
import pg from 'pg'
import { type BrokerConfig, loadConfig } from '../broker.config.js'
import { type Pulsegate, startPulsegate } from '../src/broker.js'
import { withOps } from '../src/cli/ops.js'
import { initPki, issueCertWithCa, pkiPaths } from '../src/identity/pki.js'
import { Tokens } from '../src/identity/tokens.js'
import { createLogger } from '../src/log.js'
import { encryptBatch, signBatch } from '../src/pipeline/envelope.js'
import { METRICS } from '../src/pipeline/types.js'
import type { Queryable } from '../src/store/db.js'
import { type RpcRequest, runRpc } from '../src/transport/http-routes.js'
import { Rng } from './physiology.js'
import { forEachLimit } from './protocol.js'

export interface SignedOptions {
  /** trackers; two per user (watch, strap), one bridge per user */
  devices: number
  /** seconds over which each bridge relays its batches */
  durationS: number
  /** batches per device */
  batches?: number
  /** samples per batch */
  batch?: number
  encrypted: boolean
  /** share of bridges that forge (0…1) */
  maliciousShare: number
  seed?: number
  idPrefix?: string
  /** a broker in this process (tests); else embeddedBroker starts one, else the configured one is used */
  broker?: Pulsegate
  embeddedBroker?: boolean
  config?: BrokerConfig
  /** plain MQTT listener of the bridges (default: the broker's, or PULSEGATE_MQTT_PORT) */
  mqttUrl?: string
  log?: (line: string) => void
}

export interface ForgeryCounts {
  sent: number
  refused: number
  /** rows of these batches found in the database: must be 0 */
  stored: number
}

export interface SignedReport {
  devices: number
  bridges: number
  maliciousBridges: number
  encrypted: boolean
  genuine: { batches: number; samples: number; acked: number; stored: number }
  altered: ForgeryCounts
  replayed: ForgeryCounts
  /** rejections the broker sent that no forgery explains (reason → count) */
  unexpectedRejections: Record<string, number>
  ok: boolean
  problems: string[]
}

interface SimDevice {
  deviceId: string
  key: crypto.KeyObject
  certPem: string
  fingerprint: string
  contentKey: Buffer | null
}

interface SimUser {
  userId: string
  watch: SimDevice
  strap: SimDevice
  malicious: boolean
}

/** One batch's samples as the tracker measured them: what the database must hold (or not) afterwards. */
interface Sent {
  deviceId: string
  times: number[]
  values: number[]
}

const ALTERED_REASONS = new Set(['bad_signature', 'decrypt_failed'])
const REPLAY_REASONS = new Set(['device_mismatch'])
const REGISTER_CHUNK = 1000

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export async function runSigned(options: SignedOptions): Promise<SignedReport> {
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const ephemeral = { host: '127.0.0.1', mqttPort: 0, mqttsPort: 0, httpPort: 0, shutdownSignals: false }
  const config = options.broker?.config ?? options.config ?? loadConfig(options.embeddedBroker ? ephemeral : {})
  await initPki(path.join(config.dataDir, 'pki'))
  let instance = options.broker ?? null
  let own = false
  if (!instance && options.embeddedBroker) {
    const level = process.env.PULSEGATE_LOG_LEVEL ?? 'warn'
    instance = await startPulsegate(loadConfig({ ...config, ...ephemeral }, {}), { log: createLogger(level) })
    own = true
  }
  try {
    return await run(options, instance?.config ?? config, instance, log)
  } finally {
    if (own && instance) await instance.stop()
  }
}

async function provision(o: SignedOptions, config: BrokerConfig, rng: Rng): Promise<SimUser[]> {
  const p = pkiPaths(path.join(config.dataDir, 'pki'))
  const caCert = fs.readFileSync(p.caCert, 'utf8')
  const caKey = fs.readFileSync(p.caKey, 'utf8')
  const prefix = o.idPrefix ?? `sig${o.seed ?? 1}`
  const nUsers = Math.max(1, Math.ceil(o.devices / 2))
  const nMalicious = o.maliciousShare > 0 ? Math.max(1, Math.round(nUsers * o.maliciousShare)) : 0
  // Fisher–Yates with the run's seed: the same seed, the same malicious bridges.
  const order = Array.from({ length: nUsers }, (_, i) => i)
  for (let i = nUsers - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1))
    ;[order[i], order[j]] = [order[j] as number, order[i] as number]
  }
  const malicious = new Set(order.slice(0, nMalicious))
  const device = async (deviceId: string): Promise<SimDevice> => {
    const c = await issueCertWithCa(caCert, caKey, deviceId)
    return {
      deviceId,
      key: crypto.createPrivateKey(c.keyPem),
      certPem: c.certPem,
      fingerprint: c.fingerprint256,
      contentKey: null,
    }
  }
  const users: SimUser[] = []
  await forEachLimit(
    Array.from({ length: nUsers }, (_, i) => i),
    8,
    async (i) => {
      const userId = `${prefix}-u${String(i + 1).padStart(5, '0')}`
      users[i] = {
        userId,
        watch: await device(`${userId}-w`),
        strap: await device(`${userId}-s`),
        malicious: malicious.has(i),
      }
    },
  )
  return users
}

async function register(users: SimUser[], o: SignedOptions, config: BrokerConfig, instance: Pulsegate | null) {
  const devices = users.flatMap((u) => [u.watch, u.strap].map((d) => ({ d, userId: u.userId })))
  const work = async (op: (req: RpcRequest) => Promise<unknown>) => {
    for (let i = 0; i < devices.length; i += REGISTER_CHUNK) {
      await op({
        op: 'registerDevices',
        devices: devices.slice(i, i + REGISTER_CHUNK).map(({ d, userId }) => ({
          deviceId: d.deviceId,
          userId,
          fingerprint: d.fingerprint,
          certPem: d.certPem,
          // Signed readings required: a forger cannot fall back to an unsigned batch either.
          signedRequired: true,
        })),
      })
    }
    if (!o.encrypted) return
    await forEachLimit(devices, 8, async ({ d }) => {
      const res = (await op({ op: 'provisionContentKey', deviceId: d.deviceId })) as { contentKey: string }
      d.contentKey = Buffer.from(res.contentKey, 'base64')
    })
  }
  if (instance) {
    const { registry, db } = instance
    await work((req) => runRpc(registry, req, { config, db }))
  } else await withOps(config, work)
}

/** The database this run is checked against: the broker's own, or the configured server. */
async function verifyDb(
  config: BrokerConfig,
  instance: Pulsegate | null,
): Promise<Queryable & { close(): Promise<void> }> {
  if (instance) return { query: (sql, params) => instance.db.query(sql, params), close: async () => undefined }
  if (!config.databaseUrl) throw new Error('verification needs PULSEGATE_DATABASE_URL (or --embedded-broker)')
  const client = new pg.Client({ connectionString: config.databaseUrl })
  await client.connect()
  return {
    async query<R>(sql: string, params?: unknown[]) {
      const r = await client.query(sql, params)
      return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 }
    },
    close: () => client.end(),
  } as Queryable & { close(): Promise<void> }
}

/** Samples of `batches` found stored as sent (device, heart rate, time, value). */
async function storedCount(db: Queryable, batches: readonly Sent[], valueMatters: boolean): Promise<number> {
  if (batches.length === 0) return 0
  const dev: string[] = []
  const t: number[] = []
  const v: number[] = []
  for (const b of batches) {
    b.times.forEach((time, i) => {
      dev.push(b.deviceId)
      t.push(time)
      v.push(b.values[i] as number)
    })
  }
  const r = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM unnest($1::text[], $2::float8[], $3::float8[]) AS x(dev, t, v)
     JOIN devices d ON d.device_id = x.dev
     JOIN samples s ON s.device_key = d.device_key AND s.metric = $4 AND s.time = to_timestamp(x.t / 1000.0)
     WHERE NOT $5 OR s.value = x.v`,
    [dev, t, v, METRICS.hr, valueMatters],
  )
  return Number(r.rows[0]?.n ?? 0)
}

async function run(
  o: SignedOptions,
  config: BrokerConfig,
  instance: Pulsegate | null,
  log: (line: string) => void,
): Promise<SignedReport> {
  const rng = new Rng(o.seed ?? 1)
  const perBatch = o.batch ?? 5
  const batches = o.batches ?? Math.max(2, Math.round(o.durationS))
  const users = await provision(o, config, rng)
  await register(users, o, config, instance)
  log(`signed: ${users.length * 2} devices registered (signed readings required${o.encrypted ? ', encrypted' : ''})`)

  const tokens = instance?.tokens ?? new Tokens(config)
  const mqttUrl =
    o.mqttUrl ?? (instance ? `mqtt://127.0.0.1:${instance.ports.mqtt ?? 0}` : `mqtt://127.0.0.1:${config.mqttPort}`)
  // Watch samples on whole seconds, strap samples half a second later: a strap row at a watch time can only be a
  // replayed watch batch, and an altered watch batch replaces the genuine one (that slot holds nothing genuine).
  const start = Math.floor((Date.now() - (batches * perBatch + 120) * 1000) / 1000) * 1000
  const genuine: Sent[] = []
  const acked: Sent[] = []
  const altered: Sent[] = []
  const replayed: Sent[] = []
  const rejections = new Map<string, number>()
  const refusedAltered = { n: 0 }
  const refusedReplayed = { n: 0 }
  const unexpected: Record<string, number> = {}
  const clients = new Map<string, MqttClient>()
  const seal = async (d: SimDevice, bytes: Buffer) => {
    const signed = await signBatch(bytes, d.deviceId, d.key)
    return d.contentKey ? encryptBatch(signed, d.deviceId, d.contentKey) : signed
  }
  const makeBatch = (d: SimDevice, k: number, offsetMs: number, seq: number) => {
    const times = Array.from({ length: perBatch }, (_, j) => start + (k * perBatch + j) * 1000 + offsetMs)
    const values = times.map(() => Math.round(rng.range(95, 165)))
    const bytes = Buffer.from(encode({ seq, samples: times.map((t, j) => ({ t, hr: values[j] })) }))
    return { sent: { deviceId: d.deviceId, times, values }, bytes }
  }

  try {
    await forEachLimit(users, 16, async (u) => {
      const jwt = await tokens.sign({ sub: u.userId, role: 'bridge', ttl: Math.ceil(o.durationS) + 3600 })
      const c = await mqtt.connectAsync(mqttUrl, {
        clientId: `bridge:${u.userId}:sig`,
        username: 'jwt',
        password: jwt,
        reconnectPeriod: 0,
        connectTimeout: 30_000,
        protocolVersion: 4,
      })
      clients.set(u.userId, c)
      c.on('message', (topic, payload) => {
        let reason = 'unparsable'
        try {
          reason = String((JSON.parse(payload.toString()) as { reason?: unknown }).reason)
        } catch {}
        const onWatch = topic === `devices/${u.watch.deviceId}/rejections`
        if (u.malicious && onWatch && ALTERED_REASONS.has(reason)) refusedAltered.n++
        else if (u.malicious && !onWatch && REPLAY_REASONS.has(reason)) refusedReplayed.n++
        else unexpected[reason] = (unexpected[reason] ?? 0) + 1
        rejections.set(reason, (rejections.get(reason) ?? 0) + 1)
      })
      await c.subscribeAsync([`devices/${u.watch.deviceId}/rejections`, `devices/${u.strap.deviceId}/rejections`], {
        qos: 1,
      })
    })
    log(`signed: ${users.length} bridges connected (${users.filter((u) => u.malicious).length} malicious)`)

    const periodMs = (o.durationS * 1000) / batches
    const began = Date.now()
    const seq = Date.now() // seqs of this run above any earlier run's, so no seq window entry answers them
    for (let k = 0; k < batches; k++) {
      await forEachLimit(users, 64, async (u) => {
        const c = clients.get(u.userId) as MqttClient
        const w = makeBatch(u.watch, k, 0, seq + k)
        const s = makeBatch(u.strap, k, 500, seq + k)
        const wBytes = await seal(u.watch, w.bytes)
        const sBytes = await seal(u.strap, s.bytes)
        const pub = (d: SimDevice, payload: Buffer) =>
          c.publishAsync(`devices/${d.deviceId}/readings`, payload, { qos: 1 })
        if (u.malicious && k % 2 === 0) {
          // Alters the watch batch in transit: a value when it can read it, else a ciphertext byte.
          const forged = u.watch.contentKey ? flipByte(wBytes) : alterValues(wBytes)
          altered.push(w.sent)
          await pub(u.watch, forged)
        } else {
          genuine.push(w.sent)
          await pub(u.watch, wBytes)
          acked.push(w.sent)
          if (u.malicious) {
            // Replays the watch's genuine batch as the strap's.
            replayed.push({ ...w.sent, deviceId: u.strap.deviceId })
            await pub(u.strap, wBytes)
          }
        }
        genuine.push(s.sent)
        await pub(u.strap, sBytes)
        acked.push(s.sent)
      })
      const next = began + (k + 1) * periodMs
      if (Date.now() < next) await sleep(next - Date.now())
    }
    // The rejections follow their PUBACKs; wait (bounded) until every forgery's has arrived.
    const deadline = Date.now() + 30_000
    while ((refusedAltered.n < altered.length || refusedReplayed.n < replayed.length) && Date.now() < deadline) {
      await sleep(50)
    }
  } finally {
    await Promise.allSettled([...clients.values()].map((c) => c.endAsync()))
  }

  const db = await verifyDb(config, instance)
  let report: SignedReport
  try {
    const samples = (xs: readonly Sent[]) => xs.reduce((n, b) => n + b.times.length, 0)
    const storedGenuine = await storedCount(db, acked, true)
    // Forgeries: any row at their keys is one of them (the slot holds nothing genuine), whatever its value.
    const alteredStored = await storedCount(db, altered, false)
    const replayedStored = await storedCount(db, replayed, false)
    report = {
      devices: users.length * 2,
      bridges: users.length,
      maliciousBridges: users.filter((u) => u.malicious).length,
      encrypted: o.encrypted,
      genuine: { batches: genuine.length, samples: samples(genuine), acked: samples(acked), stored: storedGenuine },
      altered: { sent: altered.length, refused: refusedAltered.n, stored: alteredStored },
      replayed: { sent: replayed.length, refused: refusedReplayed.n, stored: replayedStored },
      unexpectedRejections: unexpected,
      ok: false,
      problems: [],
    }
  } finally {
    await db.close()
  }
  const p = report.problems
  if (report.altered.stored > 0) p.push(`${report.altered.stored} samples of altered batches stored`)
  if (report.replayed.stored > 0) p.push(`${report.replayed.stored} samples of replayed batches stored`)
  if (report.altered.refused !== report.altered.sent) p.push('not every altered batch was refused')
  if (report.replayed.refused !== report.replayed.sent) p.push('not every replayed batch was refused')
  if (report.genuine.stored !== report.genuine.acked) {
    p.push(`${report.genuine.acked - report.genuine.stored} genuine acked samples not stored`)
  }
  if (Object.keys(unexpected).length > 0) p.push(`unexpected rejections: ${JSON.stringify(unexpected)}`)
  report.ok = p.length === 0
  return report
}

/** A Sign1's heart rates raised by 25 (still plausible: only the signature can tell). */
function alterValues(sign1: Buffer): Buffer {
  const msg = Sign1.decode(sign1)
  const batch = decode(msg.payload) as { seq: number; samples: { t: number; hr: number }[] }
  for (const s of batch.samples) s.hr += 25
  return new Sign1(msg.protectedHeaders, msg.unprotectedHeaders, encode(batch), msg.signature).encode()
}

/** A bridge cannot read an encrypted batch; all it can change is ciphertext. */
function flipByte(bytes: Buffer): Buffer {
  const out = Buffer.from(bytes)
  const i = out.length - 24
  out[i] = (out[i] as number) ^ 0x40
  return out
}

export function signedSummary(r: SignedReport): string {
  const f = (name: string, c: ForgeryCounts) =>
    `  ${name.padEnd(9)} sent ${c.sent}, refused ${c.refused}, stored ${c.stored}`
  return [
    `signed readings: ${r.devices} devices, ${r.bridges} bridges (${r.maliciousBridges} malicious)${r.encrypted ? ', encrypted' : ''}`,
    `  genuine   ${r.genuine.batches} batches, ${r.genuine.acked} samples acked, ${r.genuine.stored} stored`,
    f('altered', r.altered),
    f('replayed', r.replayed),
    r.ok ? '  OK: every forged batch refused, none stored' : `  FAILED: ${r.problems.join('; ')}`,
  ].join('\n')
}

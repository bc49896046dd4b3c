// Test harness: a real pulsegate on ephemeral ports against a real store (a fresh PostgreSQL database on the local
// server, or the embedded TimescaleDB in a temp dir), real certificates, real MQTT clients.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import pg from 'pg'
import { type BrokerConfig, type DeepPartial, ephemeralConfig } from '../../broker.config.js'
import { type Pulsegate, type StartOptions, startPulsegate } from '../../src/broker.js'
import { initPki, issueDeviceCert, pkiPaths } from '../../src/identity/pki.js'
import type { Role } from '../../src/identity/principal.js'
import { createLogger } from '../../src/log.js'

export const PG_ADMIN_URL = process.env.PULSEGATE_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = process.env.PULSEGATE_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export type StoreKind = 'postgres' | 'embedded'

/** A fresh database on the local PostgreSQL; fails loudly (never skips) when the server is not there. */
export async function createTestDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `pulsegate_test_${crypto.randomBytes(5).toString('hex')}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 })
  try {
    await admin.connect()
  } catch (err) {
    throw new Error(`PostgreSQL is required for the integration tests at ${PG_ADMIN_URL}: ${(err as Error).message}`)
  }
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = PG_ADMIN_URL.replace(/\/[^/]*$/, `/${name}`)
  return {
    url,
    async drop() {
      const c = new pg.Client({ connectionString: PG_ADMIN_URL })
      await c.connect()
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await c.end()
    },
  }
}

/**
 * Statements of this test's database waiting on a lock whose text is LIKE `queryLike`, read through `watcher` (a
 * connection outside the lock holder's transaction: inside it pg_stat_activity is read once per transaction). Only
 * this database: the suite's files share one server, and a neighbour's waiting flush must not count here.
 */
export async function lockWaits(watcher: pg.Client, queryLike: string): Promise<number> {
  const r = await watcher.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
    [queryLike],
  )
  return r.rows[0]?.n ?? 0
}

/** Redis answers PING; fails loudly (never skips) when it is not there, naming the address instead of ioredis' retries. */
export async function requireRedis(url: string = REDIS_URL): Promise<void> {
  const r = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 3000,
  })
  r.on('error', () => {})
  try {
    await r.connect()
    await r.ping()
  } catch (err) {
    throw new Error(`Redis is required for the integration tests at ${url}: ${(err as Error).message}`)
  } finally {
    r.disconnect()
  }
}

/** Deletes a test run's Redis keys (cluster mode: sessions in db 1, leases and boards in db 0; channels need none). */
export async function dropRedisPrefix(
  prefix: string,
  dbs: readonly number[] = [0, 1],
  url: string = REDIS_URL,
): Promise<void> {
  for (const db of dbs) {
    const r = new Redis(url, { db })
    try {
      let cursor = '0'
      do {
        const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
        cursor = next
        if (keys.length > 0) await r.del(...keys)
      } while (cursor !== '0')
    } finally {
      await r.quit()
    }
  }
}

export function tempDir(prefix = 'pulsegate-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

export interface TestBroker {
  pg: Pulsegate
  dataDir: string
  store: StoreKind
  dbUrl: string | null
  ca: Buffer
  stop(): Promise<void>
}

export async function startTestBroker(
  store: StoreKind,
  overrides: DeepPartial<BrokerConfig> = {},
  reuse?: { dataDir?: string; dbUrl?: string },
  start: Omit<StartOptions, 'log'> = {},
): Promise<TestBroker> {
  if (overrides.redisUrl) await requireRedis(overrides.redisUrl)
  const dataDir = reuse?.dataDir ?? tempDir()
  const database = store === 'postgres' && !reuse?.dbUrl ? await createTestDatabase() : null
  const dbUrl = reuse?.dbUrl ?? database?.url ?? null
  await initPki(path.join(dataDir, 'pki'))
  const config = ephemeralConfig(
    {
      dataDir,
      databaseUrl: dbUrl,
      logLevel: (process.env.PULSEGATE_TEST_LOG as BrokerConfig['logLevel']) ?? 'silent',
      jwtSecret: 'test-secret-0123456789abcdef',
    },
    overrides,
  )
  const log = createLogger(config.logLevel)
  const instance = await startPulsegate(config, { log, ...start })
  let stopped = false
  return {
    pg: instance,
    dataDir,
    store,
    dbUrl,
    ca: fs.readFileSync(pkiPaths(path.join(dataDir, 'pki')).caCert),
    async stop() {
      if (stopped) return
      stopped = true
      await instance.stop()
      if (database && !reuse?.dbUrl) await database.drop()
      if (config.redisUrl && config.databaseUrl)
        await dropRedisPrefix(config.cluster.prefix, [0, config.cluster.redisDb], config.redisUrl)
    },
  }
}

export interface DeviceCreds {
  deviceId: string
  userId: string
  cert: string
  key: string
  fingerprint: string
}

export async function provisionDevice(tb: TestBroker, deviceId: string, userId: string): Promise<DeviceCreds> {
  const issued = await issueDeviceCert(path.join(tb.dataDir, 'pki'), deviceId)
  await tb.pg.registry.registerDevice({ deviceId, userId, fingerprint: issued.fingerprint256 })
  return { deviceId, userId, cert: issued.certPem, key: issued.keyPem, fingerprint: issued.fingerprint256 }
}

// Bounds, not waits: a broker and its clients share one event loop on a machine that can be 5× slower than usual
// (a TLS handshake plus a registry look-up, a SUBACK after an ACL look-up in the database).
const base: IClientOptions = { reconnectPeriod: 0, connectTimeout: 15_000, protocolVersion: 4, queueQoSZero: false }

/** Called with the client before any packet of the broker is handled (see `connect`). */
export type BeforeConnect = (client: MqttClient) => void

/**
 * MQTT.js's connectAsync, with a hook that runs before the first packet is read. A session's queued messages (clean:
 * false) follow the CONNACK at once, and can arrive in the same read: MQTT.js handles them on a next tick, before the code
 * after `await connectAsync(…)` runs, so a 'message' listener attached there can miss them (and they are acked, so
 * gone). Tests that expect such messages attach their listener in `before`.
 */
function connect(url: string, opts: IClientOptions, before?: BeforeConnect): Promise<MqttClient> {
  if (!before) return mqtt.connectAsync(url, opts)
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, opts)
    before(client)
    const settle = () => {
      client.off('connect', onConnect)
      client.off('error', onError)
      client.off('close', onClose)
    }
    const onConnect = () => {
      settle()
      resolve(client)
    }
    const onError = (err: Error) => {
      settle()
      client.end()
      reject(err)
    }
    // Closed without a CONNACK (and without an error event): refused, not left hanging.
    const onClose = () => onError(new Error('connection closed before its CONNACK'))
    client.once('connect', onConnect)
    client.once('error', onError)
    client.once('close', onClose)
  })
}

export function connectDevice(
  tb: TestBroker,
  dev: { deviceId: string; cert: string; key: string },
  extra: IClientOptions = {},
  before?: BeforeConnect,
): Promise<MqttClient> {
  return connect(
    `mqtts://127.0.0.1:${tb.pg.ports.mqtts}`,
    {
      ...base,
      clientId: dev.deviceId,
      cert: dev.cert,
      key: dev.key,
      ca: tb.ca,
      servername: 'localhost',
      ...extra,
    },
    before,
  )
}

export async function token(tb: TestBroker, sub: string, role: Role, events?: string[], ttl = 600): Promise<string> {
  return tb.pg.tokens.sign({ sub, role, ttl, ...(events ? { events } : {}) })
}

export function connectWithToken(
  tb: TestBroker,
  jwt: string,
  clientId: string,
  via: 'tcp' | 'ws' | 'ws-header' | 'tls' = 'tcp',
  extra: IClientOptions = {},
  before?: BeforeConnect,
): Promise<MqttClient> {
  if (via === 'tls') {
    // The token TLS listener (mqttsTokenEnabled): server certificate checked, no client certificate unless `extra` has one.
    return connect(
      `mqtts://127.0.0.1:${tb.pg.ports.mqttsToken}`,
      { ...base, clientId, username: 'jwt', password: jwt, ca: tb.ca, servername: 'localhost', ...extra },
      before,
    )
  }
  if (via === 'tcp') {
    return connect(
      `mqtt://127.0.0.1:${tb.pg.ports.mqtt}`,
      { ...base, clientId, username: 'jwt', password: jwt, ...extra },
      before,
    )
  }
  const url = `ws://127.0.0.1:${tb.pg.ports.http}/mqtt`
  if (via === 'ws') return connect(url, { ...base, clientId, username: 'jwt', password: jwt, ...extra }, before)
  return connect(
    url,
    { ...base, clientId, wsOptions: { headers: { Authorization: `Bearer ${jwt}` } }, ...extra },
    before,
  )
}

/** CONNACK return code of a refused connection (MQTT.js rejects with an error carrying `code`). */
export async function connackCode(p: Promise<MqttClient>): Promise<number | string> {
  try {
    const c = await p
    await c.endAsync()
    return 0
  } catch (err) {
    const e = err as { code?: number | string; message: string }
    return e.code ?? e.message
  }
}

/**
 * Polls `fn` until it returns something truthy. The default bound (20 s) is a bound on a condition, not a delay: a
 * passing run returns as soon as it holds; the output engine has lagged the last PUBACK by ~7 s on these 2-core
 * machines under the parallel suite, which a 10 s bound left too little room for.
 */
export function waitFor<T>(fn: () => T | Promise<T>, timeoutMs = 20_000, everyMs = 25): Promise<NonNullable<T>> {
  const started = Date.now()
  return new Promise((resolve, reject) => {
    const tick = async () => {
      try {
        const v = await fn()
        if (v) return resolve(v as NonNullable<T>)
      } catch {
        // keep trying
      }
      if (Date.now() - started > timeoutMs) return reject(new Error('waitFor: timed out'))
      setTimeout(tick, everyMs)
    }
    void tick()
  })
}

export function nextMessage(
  client: MqttClient,
  topic: string,
  timeoutMs = 15_000,
): Promise<{ topic: string; payload: Buffer }> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('message', on)
      reject(new Error(`no message on ${topic} within ${timeoutMs} ms`))
    }, timeoutMs)
    const on = (t: string, payload: Buffer) => {
      if (t !== topic) return
      clearTimeout(timer)
      client.off('message', on)
      resolve({ topic: t, payload })
    }
    client.on('message', on)
  })
}

/** SUBACK return code for one filter: the granted QoS, or 128 when refused (MQTT.js reports that as an error). */
export function subackCode(c: MqttClient, topic: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no SUBACK for ${topic}`)), 15_000)
    c.subscribe(topic, { qos: 1 }, (err, _granted, packet) => {
      clearTimeout(timer)
      const code = packet?.granted[0]
      if (typeof code === 'number') resolve(code)
      else reject(err ?? new Error(`SUBACK for ${topic} without a return code`))
    })
  })
}

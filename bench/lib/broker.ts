// pulsegate in this process for a benchmark, the way test/helpers/harness.ts starts it (both: `ephemeralConfig` of
// broker.config.ts): a fresh PostgreSQL database (CREATE DATABASE per run, DROP … WITH (FORCE) afterwards) or the
// embedded store in a temp data dir; ports 0; the bench PKI from ./certs.ts as TLS material; devices registered
// through `registry.registerDevice`.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { pino } from 'pino'
import { type BrokerConfig, type DeepPartial, ephemeralConfig } from '../../broker.config.js'
import { type Pulsegate, startPulsegate } from '../../src/broker.js'
import type { BenchDevice, BenchPki } from './certs.js'

export type StoreKind = 'postgres' | 'embedded'

export const PG_ADMIN_URL = process.env.PULSEGATE_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'

export interface BenchBroker {
  instance: Pulsegate
  store: StoreKind
  dataDir: string
  dbName: string | null
  /** device id → device_key */
  deviceKeys: Map<string, number>
  provisionMs: number
  stop(): Promise<void>
}

async function adminQuery(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 })
  try {
    await c.connect()
  } catch (err) {
    throw new Error(`PostgreSQL is required at ${PG_ADMIN_URL}: ${(err as Error).message}`)
  }
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

export async function startBenchBroker(
  store: StoreKind,
  pki: BenchPki,
  overrides: DeepPartial<BrokerConfig> = {},
  logLevel: BrokerConfig['logLevel'] = 'warn',
): Promise<BenchBroker> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-bench-'))
  let dbName: string | null = null
  let dbUrl: string | undefined
  if (store === 'postgres') {
    dbName = `pulsegate_bench_${crypto.randomBytes(5).toString('hex')}`
    await adminQuery(`CREATE DATABASE ${dbName}`)
    dbUrl = PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`)
  }
  const cleanup = async () => {
    if (dbName) await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {})
    fs.rmSync(dataDir, { recursive: true, force: true })
  }
  let instance: Pulsegate
  try {
    const config = ephemeralConfig(
      { dataDir, databaseUrl: dbUrl, logLevel, jwtSecret: 'bench-secret-0123456789abcdef' },
      { tls: { caFile: pki.caCert, certFile: pki.serverCert, keyFile: pki.serverKey }, ...overrides },
    )
    // JSON lines to stderr, synchronously, on this thread: no pino-pretty transport thread beside the broker.
    const log = pino({ name: 'pulsegate', level: config.logLevel }, pino.destination({ fd: 2, sync: true }))
    instance = await startPulsegate(config, { log })
  } catch (err) {
    await cleanup()
    throw err
  }
  let stopped = false
  return {
    instance,
    store,
    dataDir,
    dbName,
    deviceKeys: new Map(),
    provisionMs: 0,
    async stop() {
      if (stopped) return
      stopped = true
      try {
        await instance.stop()
      } finally {
        await cleanup()
      }
    },
  }
}

/** Registers the devices (their certificate fingerprints) with `concurrency` registrations in flight. */
export async function provisionDevices(b: BenchBroker, devices: BenchDevice[], concurrency = 8): Promise<void> {
  const started = performance.now()
  let next = 0
  const worker = async () => {
    while (next < devices.length) {
      const d = devices[next++] as BenchDevice
      const key = await b.instance.registry.registerDevice({
        deviceId: d.deviceId,
        userId: d.userId,
        fingerprint: d.fingerprint,
      })
      b.deviceKeys.set(d.deviceId, key)
    }
  }
  await Promise.all(Array.from({ length: b.store === 'embedded' ? 1 : concurrency }, worker))
  b.provisionMs = performance.now() - started
}

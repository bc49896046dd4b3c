// A real pulsegate cluster for tests: N broker *processes* (spawned with node and the TypeScript loader, so no build
// is needed) on one fresh PostgreSQL database and the local Redis under a per-run prefix, sharing one data dir (PKI,
// keys, JWT secret) as replicas share their secrets. Node 1 starts first (it creates the keys and runs the
// migrations); the others then start together. Each node listens on ephemeral loopback ports read from its output.
import { type ChildProcess, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { type BrokerConfig, type DeepPartial, ephemeralConfig } from '../../broker.config.js'
import { initPki, issueDeviceCert, pkiPaths } from '../../src/identity/pki.js'
import type { Role } from '../../src/identity/principal.js'
import { Tokens } from '../../src/identity/tokens.js'
import { createLogger } from '../../src/log.js'
import type { Db } from '../../src/store/db.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import { createTestDatabase, type DeviceCreds, dropRedisPrefix, REDIS_URL, requireRedis, tempDir } from './harness.js'

const here = path.dirname(fileURLToPath(import.meta.url))
export const JWT_SECRET = 'test-secret-0123456789abcdef'

export interface ClusterNode {
  name: string
  ports: { mqtt: number; mqtts: number; http: number }
  proc: ChildProcess
  /** resolves with the exit code (null after a signal) */
  exited: Promise<number | null>
  output(): string
}

export interface TestCluster {
  nodes: ClusterNode[]
  prefix: string
  dataDir: string
  dbUrl: string
  db: Db
  registry: Registry
  ca: Buffer
  token(sub: string, role: Role, events?: string[]): Promise<string>
  provisionDevice(deviceId: string, userId: string): Promise<DeviceCreds>
  connectDevice(node: ClusterNode, dev: DeviceCreds, extra?: IClientOptions): Promise<MqttClient>
  connectApp(node: ClusterNode, jwt: string, clientId: string, extra?: IClientOptions): Promise<MqttClient>
  /** the node's /metrics text */
  metrics(node: ClusterNode): Promise<string>
  stop(): Promise<void>
}

const base: IClientOptions = { reconnectPeriod: 0, connectTimeout: 15_000, protocolVersion: 4, queueQoSZero: false }

/** One broker process (cluster-node.ts) on the store in `spec`: an empty `databaseUrl` is the embedded store. */
export function spawnNode(
  name: string,
  spec: { dataDir: string; databaseUrl: string; overrides: DeepPartial<BrokerConfig> },
): Promise<ClusterNode> {
  const proc = spawn(
    process.execPath,
    ['--import', path.join(here, 'ts-loader.mjs'), path.join(here, 'cluster-node.ts')],
    {
      env: {
        ...process.env,
        PULSEGATE_TEST_NODE: JSON.stringify({
          ...spec,
          jwtSecret: JWT_SECRET,
          logLevel: process.env.PULSEGATE_TEST_LOG ?? 'warn',
          overrides: { ...spec.overrides, node: { name } },
        }),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let out = ''
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)))
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      out += chunk.toString()
      const m = /PULSEGATE_READY (\{.*\})/.exec(out)
      if (m) {
        proc.stdout?.off('data', onData)
        proc.stdout?.on('data', (c: Buffer) => {
          out += c.toString()
        })
        resolve({ name, ports: JSON.parse(m[1] as string), proc, exited, output: () => out })
      }
    }
    proc.stdout?.on('data', onData)
    proc.stderr?.on('data', (c: Buffer) => {
      out += c.toString()
    })
    void exited.then((code) => reject(new Error(`node ${name} exited (${code}) before it was ready:\n${out}`)))
  })
}

const running = new Set<ChildProcess>()
process.on('exit', () => {
  for (const p of running) p.kill('SIGKILL')
})

export async function startCluster(n: number, overrides: DeepPartial<BrokerConfig> = {}): Promise<TestCluster> {
  // where the nodes keep their keys (a test may give the cluster a Redis of its own)
  const redisUrl = overrides.redisUrl ?? REDIS_URL
  await requireRedis(redisUrl)
  const dataDir = tempDir('pulsegate-cluster-')
  await initPki(path.join(dataDir, 'pki'))
  const database = await createTestDatabase()
  const prefix = `pgt-${crypto.randomBytes(5).toString('hex')}`
  const spec = {
    dataDir,
    databaseUrl: database.url,
    overrides: {
      ...overrides,
      redisUrl,
      cluster: { heartbeatMs: 1000, leaseMs: 10_000, ...overrides.cluster, prefix },
    },
  }
  const nodes: ClusterNode[] = []
  const stopAll = async () => {
    await Promise.all(
      nodes.map(async (node) => {
        if (node.proc.exitCode !== null || node.proc.signalCode !== null) return
        node.proc.kill('SIGTERM')
        const t = setTimeout(() => node.proc.kill('SIGKILL'), 20_000)
        await node.exited
        clearTimeout(t)
        running.delete(node.proc)
      }),
    )
  }
  try {
    const first = await spawnNode('n1', spec)
    nodes.push(first)
    running.add(first.proc)
    const rest = await Promise.all(Array.from({ length: n - 1 }, (_, i) => spawnNode(`n${i + 2}`, spec)))
    for (const r of rest) {
      nodes.push(r)
      running.add(r.proc)
    }
  } catch (err) {
    await stopAll()
    await database.drop()
    throw err
  }
  const log = createLogger('silent')
  const db = openPostgres(database.url, 2, log)
  const registry = new Registry(db)
  const config = ephemeralConfig({ dataDir, databaseUrl: database.url, logLevel: 'silent', jwtSecret: JWT_SECRET })
  const tokens = new Tokens(config)
  const ca = fs.readFileSync(pkiPaths(path.join(dataDir, 'pki')).caCert)
  let stopped = false
  return {
    nodes,
    prefix,
    dataDir,
    dbUrl: database.url,
    db,
    registry,
    ca,
    token: (sub, role, events) => tokens.sign({ sub, role, ttl: 600, ...(events ? { events } : {}) }),
    async provisionDevice(deviceId, userId) {
      const issued = await issueDeviceCert(path.join(dataDir, 'pki'), deviceId)
      await registry.registerDevice({ deviceId, userId, fingerprint: issued.fingerprint256 })
      return { deviceId, userId, cert: issued.certPem, key: issued.keyPem, fingerprint: issued.fingerprint256 }
    },
    connectDevice: (node, dev, extra = {}) =>
      mqtt.connectAsync(`mqtts://127.0.0.1:${node.ports.mqtts}`, {
        ...base,
        clientId: dev.deviceId,
        cert: dev.cert,
        key: dev.key,
        ca,
        servername: 'localhost',
        ...extra,
      }),
    connectApp: (node, jwt, clientId, extra = {}) =>
      mqtt.connectAsync(`mqtt://127.0.0.1:${node.ports.mqtt}`, {
        ...base,
        clientId,
        username: 'jwt',
        password: jwt,
        ...extra,
      }),
    async metrics(node) {
      const res = await fetch(`http://127.0.0.1:${node.ports.http}/metrics`)
      return res.text()
    },
    async stop() {
      if (stopped) return
      stopped = true
      await stopAll()
      await db.close()
      await database.drop()
      await dropRedisPrefix(prefix, [0, 1], redisUrl)
    },
  }
}

export { metricValue } from './metrics-text.js'

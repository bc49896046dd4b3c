// bench/marathon.ts — the 50,000-runner marathon played for real on this machine: N pulsegate processes in cluster
// mode (one Redis, one PostgreSQL database), the device swarm (simulators/, `pulsegate simulate`) in several worker
// processes addressing the nodes directly (devices round-robin; a device that loses its node moves to the next).
//
// What it does: a fresh PostgreSQL database, a private redis-server on a free port (nothing persisted, so its
// INFO commandstats are this run's alone; `--redis-url` to use another), a shared data dir (dev PKI, keys), then
// `--nodes` broker processes (`node dist/src/cli/main.js start`, node 1 first: it creates the keys and migrates).
// Each node holds at most ~20,000 descriptors here (the hard limit), so with the default 5 % apps 50,000 devices
// need 3 nodes; the swarm's workers are sized the same way (`--workers`, default one per 15,000 connections, at
// least 2). Prints:
//   - devices connected (and reconnects), acked readings stored exactly once (lost / duplicates, by SQL query)
//   - alert latency p50/p99 (device publish of the triggering sample → the user's app receives the alert)
//   - per node: connections, RSS before/after, RSS per connection, CPU s and CPU ms per 1,000 readings committed
//   - Redis: commands during the run (INFO commandstats after − before) per reading acked, and the messages routed
//     through Redis on the run's devices/… channels (a pattern subscriber): that must be 0 — readings stay node-local
// Then one line of JSON. Exit code 1 when verification fails or a reading went through Redis.
//
// How to run (from the repository root; PostgreSQL at PULSEGATE_BENCH_PG_URL, default postgres://postgres@127.0.0.1):
//   npm run build
//   node dist/bench/marathon.js --devices 300 --duration 20              # smoke run
//   node dist/bench/marathon.js --devices 50000 --nodes 3 --duration 120 --ramp 400 --workers 4   # the marathon
// Caveat: everything shares the machine's cores (brokers, PostgreSQL, Redis, load generator): figures are for this
// machine, and the swarm's own event-loop delay is in its report (`workers`) to tell a saturated generator.
// Behind HAProxy: deploy/haproxy.cfg balances nodes on distinct hosts with the same ports; give the simulator its
// address instead (`pulsegate simulate --url mqtts://lb:8883 …`), not automated here.
import { type ChildProcess, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import pg from 'pg'
import { ephemeralConfig } from '../broker.config.js'
import { initPki } from '../src/identity/pki.js'
import { runSwarm, type SwarmReport } from '../simulators/swarm.js'
import { num, printHeaderAndExit } from './lib/args.js'
import { PG_ADMIN_URL } from './lib/broker.js'
import { loadavg, procCpuSeconds, round, sleep } from './lib/stats.js'

const { values: a } = parseArgs({
  options: {
    devices: { type: 'string', default: '300' },
    duration: { type: 'string', default: '20' },
    nodes: { type: 'string', default: '3' },
    ramp: { type: 'string', default: '300' },
    workers: { type: 'string' },
    apps: { type: 'string', default: '0.05' },
    'redis-url': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const opts = {
  devices: num('devices', a.devices, 1),
  durationS: num('duration', a.duration, 1),
  nodes: num('nodes', a.nodes, 1),
  ramp: num('ramp', a.ramp, 1),
  apps: num('apps', a.apps, 0),
}
const connections = Math.ceil(opts.devices * (1 + opts.apps))
const workers = a.workers ? num('workers', a.workers, 1) : Math.max(2, Math.ceil(connections / 15_000))
const log = (s: string) => process.stderr.write(`[marathon] ${s}\n`)
const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js')
const JWT_SECRET = crypto.randomBytes(24).toString('hex')
const PREFIX = `marathon-${crypto.randomBytes(4).toString('hex')}`

async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as net.AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL })
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

function rssKb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : 0
  } catch {
    return 0
  }
}

async function waitUntil(fn: () => Promise<boolean>, what: string, timeoutMs = 120_000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!(await fn().catch(() => false))) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(250)
  }
}

interface Node {
  name: string
  proc: ChildProcess
  ports: { mqtt: number; mqtts: number; http: number }
}

const children: ChildProcess[] = []
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
})

async function startRedis(): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort()
  const proc = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  )
  children.push(proc)
  let out = ''
  await new Promise<void>((resolve, reject) => {
    proc.stdout?.on('data', (c: Buffer) => {
      out += c.toString()
      if (out.includes('Ready to accept connections')) resolve()
    })
    proc.once('exit', (code) => reject(new Error(`redis-server exited (${code})`)))
  })
  proc.stdout?.removeAllListeners('data')
  proc.stdout?.resume()
  return { url: `redis://127.0.0.1:${port}`, proc }
}

async function startNode(i: number, env: NodeJS.ProcessEnv): Promise<Node> {
  const ports = { mqtt: await freePort(), mqtts: await freePort(), http: await freePort() }
  const name = `n${i + 1}`
  const proc = spawn(process.execPath, [CLI, 'start'], {
    env: {
      ...env,
      PULSEGATE_NODE_NAME: name,
      PULSEGATE_HOST: '127.0.0.1',
      PULSEGATE_MQTT_PORT: String(ports.mqtt),
      PULSEGATE_MQTTS_PORT: String(ports.mqtts),
      PULSEGATE_HTTP_PORT: String(ports.http),
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  children.push(proc)
  await waitUntil(async () => (await fetch(`http://127.0.0.1:${ports.http}/readyz`)).ok, `node ${name} ready`)
  return { name, proc, ports }
}

async function metricSum(node: Node, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${node.ports.http}/metrics`)).text()
  let sum = 0
  for (const line of text.split('\n'))
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  return sum
}

async function commandCalls(redis: Redis): Promise<number> {
  const info = await redis.info('commandstats')
  let calls = 0
  for (const m of info.matchAll(/calls=(\d+)/g)) calls += Number(m[1])
  return calls
}

const dbName = `pulsegate_marathon_${crypto.randomBytes(4).toString('hex')}`
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-marathon-'))
let redisProc: ChildProcess | null = null
const nodes: Node[] = []
let exitCode = 0
try {
  await admin(`CREATE DATABASE ${dbName}`)
  const dbUrl = PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`)
  let redisUrl = a['redis-url']
  if (!redisUrl) {
    const r = await startRedis()
    redisUrl = r.url
    redisProc = r.proc
  }
  await initPki(path.join(dataDir, 'pki'))
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PULSEGATE_DATA_DIR: dataDir,
    PULSEGATE_DATABASE_URL: dbUrl,
    PULSEGATE_REDIS_URL: redisUrl,
    PULSEGATE_CLUSTER_PREFIX: PREFIX,
    PULSEGATE_JWT_SECRET: JWT_SECRET,
    PULSEGATE_LOG_LEVEL: process.env.PULSEGATE_LOG_LEVEL ?? 'warn',
  }
  log(`${opts.nodes} nodes, redis ${redisUrl}, database ${dbName}; ${connections} connections, ${workers} workers`)
  nodes.push(await startNode(0, env))
  nodes.push(...(await Promise.all(Array.from({ length: opts.nodes - 1 }, (_, i) => startNode(i + 1, env)))))

  const redis = new Redis(redisUrl)
  const tap = new Redis(redisUrl)
  let routedReadings = 0
  tap.on('pmessage', () => {
    routedReadings++
  })
  await tap.psubscribe(`${PREFIX}/devices/*`)
  const rssBefore = nodes.map((n) => rssKb(n.proc.pid ?? 0))
  const cpuBefore = nodes.map((n) => procCpuSeconds(n.proc.pid ?? 0) ?? 0)
  const rowsBefore = await Promise.all(nodes.map((n) => metricSum(n, 'pulsegate_ingest_rows_committed_total')))
  const callsBefore = await commandCalls(redis)
  let atPeak: { rss: number[]; conns: number[] } | null = null
  const report: SwarmReport = await runSwarm({
    devices: opts.devices,
    durationS: opts.durationS,
    rampPerS: opts.ramp,
    appShare: opts.apps,
    workers,
    url: nodes.map((n) => `mqtts://127.0.0.1:${n.ports.mqtts}`),
    wsUrl: nodes.map((n) => `ws://127.0.0.1:${n.ports.http}/mqtt`),
    mqttUrl: nodes.map((n) => `mqtt://127.0.0.1:${n.ports.mqtt}`),
    config: ephemeralConfig({ dataDir, databaseUrl: dbUrl, logLevel: 'warn', jwtSecret: JWT_SECRET }),
    drainS: 120,
    progress: true,
    onPhase: (phase) => {
      // At the end of sampling every link is still up: memory and connections per node at their peak.
      if (phase !== 'draining') return
      void Promise.all(nodes.map((n) => metricSum(n, 'pulsegate_connections'))).then((conns) => {
        atPeak = { rss: nodes.map((n) => rssKb(n.proc.pid ?? 0)), conns }
      })
    },
  })
  const callsAfter = await commandCalls(redis)
  // Give the last messages on the tap a moment; a routed reading would be published right after its PUBACK.
  await sleep(500)
  const rowsAfter = await Promise.all(nodes.map((n) => metricSum(n, 'pulsegate_ingest_rows_committed_total')))
  const peak = atPeak as { rss: number[]; conns: number[] } | null
  const perNode = nodes.map((n, i) => {
    const conns = peak?.conns[i] ?? 0
    const rss = peak?.rss[i] ?? rssKb(n.proc.pid ?? 0)
    const cpuS = (procCpuSeconds(n.proc.pid ?? 0) ?? 0) - (cpuBefore[i] ?? 0)
    const rows = (rowsAfter[i] ?? 0) - (rowsBefore[i] ?? 0)
    return {
      node: n.name,
      connections: conns,
      rssBeforeMb: round((rssBefore[i] ?? 0) / 1024),
      rssPeakMb: round(rss / 1024),
      rssPerConnKb: conns > 0 ? round((rss - (rssBefore[i] ?? 0)) / conns) : null,
      cpuS: round(cpuS, 2),
      rowsCommitted: rows,
      cpuMsPer1000Rows: rows > 0 ? round((cpuS * 1e6) / rows, 1) : null,
    }
  })
  const v = report.verification
  const acked = report.readings.acked
  const redisCalls = callsAfter - callsBefore
  const out = {
    devices: report.options.devices,
    nodes: opts.nodes,
    workers,
    connected: report.connections.devices.connected + report.connections.bridges.connected,
    users: report.options.users,
    reconnects: report.connections.devices.reconnects + report.connections.bridges.reconnects,
    readingsAcked: acked,
    verification: { status: v.status, expected: v.expected, found: v.found, lost: v.lost, duplicates: v.duplicates },
    alertMs: { p50: report.latency.alertMs.p50, p99: report.latency.alertMs.p99, n: report.latency.alertMs.count },
    ackMs: { p50: report.latency.ackMs.p50, p99: report.latency.ackMs.p99 },
    readingsPerS: report.throughput.readingsPerS,
    perNode,
    redis: {
      commands: redisCalls,
      commandsPerReading: acked > 0 ? round(redisCalls / acked, 4) : null,
      readingMessagesRouted: routedReadings,
    },
    generator: report.workers,
    loadavg: loadavg(),
  }
  console.log(
    [
      `devices connected: ${out.connected}/${out.users} links (${out.devices} devices), reconnects ${out.reconnects}`,
      `acked readings: ${acked}, stored once: ${v.found}/${v.expected} (lost ${v.lost}, duplicates ${v.duplicates}) [${v.status}]`,
      `alert latency: p50 ${out.alertMs.p50} ms, p99 ${out.alertMs.p99} ms (${out.alertMs.n} alerts); ack p50 ${out.ackMs.p50} ms p99 ${out.ackMs.p99} ms`,
      ...perNode.map(
        (p) =>
          `${p.node}: ${p.connections} connections, RSS ${p.rssBeforeMb} → ${p.rssPeakMb} MB (${p.rssPerConnKb ?? '–'} KB/conn), ` +
          `CPU ${p.cpuS} s, ${p.cpuMsPer1000Rows ?? '–'} ms per 1,000 rows`,
      ),
      `redis: ${redisCalls} commands during the run, ${out.redis.commandsPerReading ?? '–'} per reading (outputs, leases, heartbeats); readings routed through Redis: ${routedReadings}`,
      `load average ${out.loadavg}`,
    ].join('\n'),
  )
  console.log(JSON.stringify(out))
  if (v.status !== 'ok' || routedReadings > 0) exitCode = 1
  await tap.quit()
  await redis.quit()
} catch (err) {
  log(`failed: ${(err as Error).stack ?? String(err)}`)
  exitCode = 1
} finally {
  await Promise.all(
    nodes.map(async (n) => {
      if (n.proc.exitCode !== null || n.proc.signalCode !== null) return
      const exited = new Promise<void>((r) => n.proc.once('exit', () => r()))
      n.proc.kill('SIGTERM')
      const t = setTimeout(() => n.proc.kill('SIGKILL'), 20_000)
      await exited
      clearTimeout(t)
    }),
  )
  if (redisProc && redisProc.exitCode === null) redisProc.kill('SIGTERM')
  await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined)
  fs.rmSync(dataDir, { recursive: true, force: true })
}
process.exit(exitCode)

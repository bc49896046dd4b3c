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
//   node dist/bench/marathon.js --devices 50000 --nodes 3 --duration 900 --ramp 60 --workers 4 \
//     --rate-hz 0.02 --batch 2 --data-dir /tmp/marathon-data                                        # the marathon
// (`--ramp` is connections per second: two cores complete ~60–75 mTLS connects/s with the swarm beside the brokers)
//   node dist/bench/marathon.js --devices 5000 --cluster-ratio --rate-hz 0.2 --batch 6 --duration 120  # cluster cost
// `--rate-hz`/`--batch`: samples per second per device and samples per batch (race-day live tracking: a sample every
// 10 s, a batch every 30 s; 1 Hz × 50,000 runners is ~270,000 readings/s, past what two cores can commit).
// `--generator-nice N` (default 10): the swarm's workers run at that nice value so they do not starve the brokers
// they share two cores with (a starved broker's loop turns slowly, and libuv accepts one connection per listener per
// turn); the workers' own loop delay stays in the report. `--generator-nice 0` to compare.
// `--eager-devices`: devices sample from power-on and buffer until their link is up (the simulator's default); here,
// by default, each is modelled from its first link on, which the generator can afford at 50,000.
// `--cluster-ratio`: the same swarm against one node without Redis, then one node in cluster mode; prints the CPU per
// 1,000 readings of each and their ratio.
// Caveat: everything shares the machine's cores (brokers, PostgreSQL, Redis, load generator): figures are for this
// machine, and the swarm's own event-loop delay is in its report (`workers`) to tell a saturated generator.
// `--haproxy` (exactly 3 nodes): a real HAProxy from deploy/haproxy.cfg in front, the nodes on 127.0.0.2–4 with the
// same ports (the config's three servers), PROXY v2 from 127.0.0.5 (`proxy.* = optional`, trusted), and the swarm
// addressing HAProxy only. HAProxy is one process needing two descriptors per connection, so under the 20,000 limit
// it carries at most ~9,000 connections here (LB_MAXCONN 9000): the full marathon addresses the nodes directly.
//   node dist/bench/marathon.js --devices 3000 --haproxy
import { type ChildProcess, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { ephemeralConfig } from '../broker.config.js'
import { initPki, pkiPaths } from '../src/identity/pki.js'
import { runSwarm, type SwarmReport } from '../simulators/swarm.js'
import { num, printHeaderAndExit, usage } from './lib/args.js'
import { PG_ADMIN_URL } from './lib/broker.js'
import { adminSql } from './lib/fresh-store.js'
import { loadavg, procCpuSeconds, round, sleep } from './lib/stats.js'
import { freePort } from './lib/free-port.js'

const { values: a } = parseArgs({
  options: {
    devices: { type: 'string', default: '300' },
    duration: { type: 'string', default: '20' },
    nodes: { type: 'string', default: '3' },
    ramp: { type: 'string', default: '300' },
    workers: { type: 'string' },
    apps: { type: 'string', default: '0.05' },
    'rate-hz': { type: 'string', default: '1' },
    batch: { type: 'string', default: '5' },
    'data-dir': { type: 'string' },
    'eager-devices': { type: 'boolean', default: false },
    'generator-nice': { type: 'string', default: '10' },
    'redis-url': { type: 'string' },
    haproxy: { type: 'boolean', default: false },
    'cluster-ratio': { type: 'boolean', default: false },
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
  rateHz: num('rate-hz', a['rate-hz'], 0.001),
  batch: num('batch', a.batch, 1),
  generatorNice: num('generator-nice', a['generator-nice'], 0),
}
if (a['cluster-ratio'] && a.haproxy) usage('--cluster-ratio runs one node, without --haproxy')
if (a.haproxy && opts.nodes !== 3) usage('--haproxy needs --nodes 3 (deploy/haproxy.cfg has three servers)')
const connections = Math.ceil(opts.devices * (1 + opts.apps))
const workers = a.workers ? num('workers', a.workers, 1) : Math.max(2, Math.ceil(connections / 15_000))
const log = (s: string) => process.stderr.write(`[marathon] ${s}\n`)
const CLI = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/cli/main.js')
const JWT_SECRET = crypto.randomBytes(24).toString('hex')
const PREFIX = `marathon-${crypto.randomBytes(4).toString('hex')}`

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
  // A thrown Error that says "exited" ends the wait at once; other failures (connection refused) are retried.
  while (
    !(await fn().catch((err: Error) => {
      if (/exited/.test(err.message)) throw err
      return false
    }))
  ) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(250)
  }
}

interface Node {
  name: string
  proc: ChildProcess
  ports: { mqtt: number; mqtts: number; http: number }
  host: string
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

const LB_SOURCE = '127.0.0.5'
const HAPROXY_CFG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../deploy/haproxy.cfg')

/** HAProxy in front of the three nodes (same ports on 127.0.0.2–4); resolves with its listener ports once it routes. */
async function startHaproxy(
  nodePorts: Node['ports'],
  dir: string,
): Promise<{ proc: ChildProcess; ports: { mqtt: number; mqtts: number; ws: number } }> {
  const p = pkiPaths(path.join(dir, 'pki'))
  const pem = path.join(dir, 'haproxy.pem')
  const part = (f: string) => fs.readFileSync(f, 'utf8').trim()
  fs.writeFileSync(pem, `${part(p.serverCert)}\n${part(p.serverKey)}\n`, { mode: 0o600 })
  const ports = { mqtt: await freePort(), mqtts: await freePort(), ws: await freePort() }
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    LB_BIND: '127.0.0.1',
    LB_SOURCE,
    LB_MQTT_PORT: String(ports.mqtt),
    LB_MQTTS_PORT: String(ports.mqtts),
    LB_MQTTS_TERM_PORT: String(await freePort()),
    LB_WS_PORT: String(ports.ws),
    LB_STATS_PORT: String(await freePort()),
    LB_STATS_SOCKET: path.join(dir, 'haproxy.sock'),
    LB_TLS_PEM: pem,
    LB_DEVICE_CA: p.caCert,
    LB_CHECK_INTER: '500ms',
    LB_MAX_CONN_RATE: '100000',
    LB_MAXCONN: '9000',
    LB_LOG_LEVEL: 'notice',
    PG_NODE1: '127.0.0.2',
    PG_NODE2: '127.0.0.3',
    PG_NODE3: '127.0.0.4',
    PG_MQTT_PORT: String(nodePorts.mqtt),
    PG_MQTTS_PORT: String(nodePorts.mqtts),
    PG_HTTP_PORT: String(nodePorts.http),
  }
  const proc = spawn('haproxy', ['-db', '-f', HAPROXY_CFG], { env, stdio: ['ignore', 'ignore', 'inherit'] })
  children.push(proc)
  // Routed = /readyz answers through its WebSocket frontend (TCP to a node, with the PROXY header).
  await waitUntil(async () => {
    if (proc.exitCode !== null) throw new Error(`haproxy exited (${proc.exitCode})`)
    return (await fetch(`http://127.0.0.1:${ports.ws}/readyz`)).ok
  }, 'haproxy routing')
  return { proc, ports }
}

async function startNode(i: number, env: NodeJS.ProcessEnv, shared?: Node['ports']): Promise<Node> {
  const ports = shared ?? { mqtt: await freePort(), mqtts: await freePort(), http: await freePort() }
  const host = shared ? `127.0.0.${i + 2}` : '127.0.0.1'
  const name = `n${i + 1}`
  const proc = spawn(process.execPath, [CLI, 'start'], {
    env: {
      ...env,
      PULSEGATE_NODE_NAME: name,
      PULSEGATE_HOST: host,
      PULSEGATE_MQTT_PORT: String(ports.mqtt),
      PULSEGATE_MQTTS_PORT: String(ports.mqtts),
      PULSEGATE_HTTP_PORT: String(ports.http),
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  children.push(proc)
  await waitUntil(async () => (await fetch(`http://${host}:${ports.http}/readyz`)).ok, `node ${name} ready`)
  return { name, proc, ports, host }
}

async function metricSum(node: Node, name: string): Promise<number> {
  const text = await (await fetch(`http://${node.host}:${node.ports.http}/metrics`)).text()
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

// --data-dir keeps the PKI and the devices' certificates between runs (issuing 50,000 takes minutes); the database
// and Redis are fresh every run all the same.
const keepDataDir = a['data-dir'] !== undefined
const dataDir = keepDataDir
  ? path.resolve(a['data-dir'] as string)
  : fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-marathon-'))

/**
 * One marathon: fresh database (and, in cluster mode, a fresh Redis), `nodeCount` broker processes, the swarm.
 * Standalone (`cluster` false) is one process without Redis: the baseline of the cluster-mode CPU ratio.
 */
async function play(cluster: boolean, nodeCount: number): Promise<{ ok: boolean; cpuMsPer1000Rows: number | null }> {
  const dbName = `pulsegate_marathon_${crypto.randomBytes(4).toString('hex')}`
  let redisProc: ChildProcess | null = null
  let haproxyProc: ChildProcess | null = null
  const nodes: Node[] = []
  try {
    await adminSql(`CREATE DATABASE ${dbName}`)
    const dbUrl = PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`)
    let redisUrl = cluster ? a['redis-url'] : undefined
    if (cluster && !redisUrl) {
      const r = await startRedis()
      redisUrl = r.url
      redisProc = r.proc
    }
    if (!(keepDataDir && fs.existsSync(pkiPaths(path.join(dataDir, 'pki')).caCert)))
      await initPki(path.join(dataDir, 'pki'))
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      PULSEGATE_DATA_DIR: dataDir,
      PULSEGATE_DATABASE_URL: dbUrl,
      ...(redisUrl ? { PULSEGATE_REDIS_URL: redisUrl, PULSEGATE_CLUSTER_PREFIX: PREFIX } : {}),
      PULSEGATE_JWT_SECRET: JWT_SECRET,
      PULSEGATE_LOG_LEVEL: process.env.PULSEGATE_LOG_LEVEL ?? 'warn',
      ...(a.haproxy
        ? {
            PULSEGATE_PROXY_MQTT: 'optional',
            PULSEGATE_PROXY_MQTTS: 'optional',
            PULSEGATE_PROXY_HTTP: 'optional',
            PULSEGATE_PROXY_TRUSTED: `${LB_SOURCE}/32`,
          }
        : {}),
    }
    log(
      `${nodeCount} nodes, redis ${redisUrl ?? 'none (standalone)'}, database ${dbName}; ${connections} connections, ${workers} workers`,
    )
    const shared = a.haproxy ? { mqtt: await freePort(), mqtts: await freePort(), http: await freePort() } : undefined
    nodes.push(await startNode(0, env, shared))
    nodes.push(...(await Promise.all(Array.from({ length: nodeCount - 1 }, (_, i) => startNode(i + 1, env, shared)))))
    const lb = shared ? await startHaproxy(shared, dataDir) : null
    haproxyProc = lb?.proc ?? null
    const urls = lb
      ? {
          url: [`mqtts://127.0.0.1:${lb.ports.mqtts}`],
          wsUrl: [`ws://127.0.0.1:${lb.ports.ws}/mqtt`],
          mqttUrl: [`mqtt://127.0.0.1:${lb.ports.mqtt}`],
        }
      : {
          url: nodes.map((n) => `mqtts://${n.host}:${n.ports.mqtts}`),
          wsUrl: nodes.map((n) => `ws://${n.host}:${n.ports.http}/mqtt`),
          mqttUrl: nodes.map((n) => `mqtt://${n.host}:${n.ports.mqtt}`),
        }

    const redis = redisUrl ? new Redis(redisUrl) : null
    const tap = redisUrl ? new Redis(redisUrl) : null
    let routedReadings = 0
    tap?.on('pmessage', () => {
      routedReadings++
    })
    await tap?.psubscribe(`${PREFIX}/devices/*`)
    const rssBefore = nodes.map((n) => rssKb(n.proc.pid ?? 0))
    const cpuBefore = nodes.map((n) => procCpuSeconds(n.proc.pid ?? 0) ?? 0)
    const rowsBefore = await Promise.all(nodes.map((n) => metricSum(n, 'pulsegate_ingest_rows_committed_total')))
    const callsBefore = redis ? await commandCalls(redis) : 0
    let atPeak: { rss: number[]; conns: number[] } | null = null
    const report: SwarmReport = await runSwarm({
      devices: opts.devices,
      durationS: opts.durationS,
      rampPerS: opts.ramp,
      appShare: opts.apps,
      rateHz: opts.rateHz,
      batch: opts.batch,
      // Each device is modelled from its first link on (the simulator's --lazy-devices): 50,000 devices sampling and
      // buffering from power-on kept the swarm's workers in garbage collection until their handshakes timed out.
      lazyDevices: !a['eager-devices'],
      // The brokers are measured here, not the generator: on race day the devices bring their own CPUs.
      generatorNice: opts.generatorNice,
      workers,
      ...urls,
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
    const callsAfter = redis ? await commandCalls(redis) : 0
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
      nodes: nodeCount,
      cluster,
      haproxy: a.haproxy === true,
      workers,
      connected: report.connections.devices.connected + report.connections.bridges.connected,
      users: report.options.users,
      reconnects: report.connections.devices.reconnects + report.connections.bridges.reconnects,
      // Why links did not connect: attempts, failures and the swarm's error counts (CONNACK codes, socket errors).
      attempts: report.connections.devices.attempts + report.connections.bridges.attempts,
      failed: report.connections.devices.failed + report.connections.bridges.failed,
      connectErrors: report.connections.errors,
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
        `devices connected: ${out.connected}/${out.users} links (${out.devices} devices), reconnects ${out.reconnects}; ${out.attempts} attempts, ${out.failed} failed ${JSON.stringify(out.connectErrors)}`,
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
    await tap?.quit()
    await redis?.quit()
    // The first node's: what the cluster-ratio mode (one node) compares.
    return { ok: v.status === 'ok' && routedReadings === 0, cpuMsPer1000Rows: perNode[0]?.cpuMsPer1000Rows ?? null }
  } catch (err) {
    log(`failed: ${(err as Error).stack ?? String(err)}`)
    return { ok: false, cpuMsPer1000Rows: null }
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
    if (haproxyProc && haproxyProc.exitCode === null) haproxyProc.kill('SIGTERM')
    if (redisProc && redisProc.exitCode === null) redisProc.kill('SIGTERM')
    await adminSql(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined)
  }
}

let exitCode = 0
try {
  if (a['cluster-ratio']) {
    // The same swarm against one process without Redis, then one process in cluster mode: what cluster mode costs
    // per reading, measured in one invocation (this machine's speed varies between slots, not within minutes).
    const alone = await play(false, 1)
    const clustered = await play(true, 1)
    const x = alone.cpuMsPer1000Rows
    const y = clustered.cpuMsPer1000Rows
    const ratio = x && y ? round(y / x, 3) : null
    console.log(
      `CPU per 1,000 readings on the node: standalone ${x ?? '–'} ms, cluster mode ${y ?? '–'} ms, ratio ${ratio ?? '–'}`,
    )
    console.log(JSON.stringify({ clusterRatio: { standaloneMsPer1000: x, clusterMsPer1000: y, ratio } }))
    if (!alone.ok || !clustered.ok) exitCode = 1
  } else if (!(await play(true, opts.nodes)).ok) exitCode = 1
} finally {
  if (!keepDataDir) fs.rmSync(dataDir, { recursive: true, force: true })
}
process.exit(exitCode)

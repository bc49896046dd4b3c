// Redis restarted under a running cluster: two broker processes on a private, throw-away redis-server (the shared
// one on 6379 serves other suites and must not be touched), killed with SIGKILL mid-run and started again empty at
// the same address: a TCP proxy the test holds, so the port the nodes know stays bound while Redis is down (a port
// Redis left could be taken meanwhile by another test file's listen(0) or outgoing connection). Readings never
// depend on Redis (they commit to PostgreSQL before the PUBACK), so the connected devices keep committing while it
// is down; no broker process dies; and once Redis is back the cross-node outputs (a device on node 1, its user's app
// on node 2) flow again. Every wait is for a condition: the devices stream a sample a second, as trackers do, and
// the test waits until what it expects has arrived.
import { type ChildProcess, spawn } from 'node:child_process'
import net from 'node:net'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LiveSnapshot } from '../../src/outputs/payloads.js'
import { type ClusterNode, startCluster, type TestCluster } from '../helpers/cluster.js'
import { waitFor } from '../helpers/harness.js'
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js'

const WAIT = 90_000 // conditions, not delays: several suites may share two cores

async function freePort(): Promise<number> {
  const srv = net.createServer()
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  const port = (srv.address() as net.AddressInfo).port
  await new Promise<void>((r) => srv.close(() => r()))
  return port
}

/** A private redis-server on `port`, nothing persisted: a restart comes back empty, the worst case. */
async function startRedis(port: number): Promise<ChildProcess> {
  const proc = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let out = ''
  await new Promise<void>((resolve, reject) => {
    proc.stdout?.on('data', (c: Buffer) => {
      out += c.toString()
      if (out.includes('Ready to accept connections')) resolve()
    })
    proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out}`)))
  })
  return proc
}

async function stopRedis(proc: ChildProcess | null, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
  const exited = new Promise<void>((r) => proc.once('exit', () => r()))
  proc.kill(signal)
  await exited
}

/** A device streaming one heart-rate sample a second (QoS 1); remembers which sample times were acked. */
function stream(client: MqttClient, deviceId: string) {
  const acked: number[] = []
  let seq = 0
  let busy = false
  const timer = setInterval(() => {
    if (busy) return // one batch in flight at a time, as a simple tracker does
    busy = true
    const t = Date.now()
    seq++
    client
      .publishAsync(`devices/${deviceId}/readings`, JSON.stringify({ seq, samples: [{ t, hr: 70 + (seq % 20) }] }), {
        qos: 1,
      })
      .then(
        () => acked.push(t),
        () => undefined,
      )
      .finally(() => {
        busy = false
      })
  }, 1000)
  return { acked, stop: () => clearInterval(timer) }
}

let c: TestCluster
let redis: ChildProcess | null = null
let proxy: TcpProxy | null = null
const clients: MqttClient[] = []
const streams: { stop(): void }[] = []

beforeAll(async () => {
  const port = await freePort()
  redis = await startRedis(port)
  proxy = await startTcpProxy('127.0.0.1', port)
  c = await startCluster(2, { redisUrl: `redis://127.0.0.1:${proxy.port}` })
}, 240_000)

afterAll(async () => {
  for (const s of streams) s.stop()
  await Promise.all(clients.map((m) => m.endAsync(true).catch(() => {})))
  try {
    await c?.stop()
  } finally {
    // the private redis-server outlives the test process otherwise (a failed stop left three running here)
    await stopRedis(redis, 'SIGTERM')
    await proxy?.close()
  }
}, 120_000)

describe('Redis restarted under a two-node cluster', () => {
  it('devices keep committing while it is down, no node crashes, outputs resume once it is back', async () => {
    const [n1, n2] = c.nodes as [ClusterNode, ClusterNode]
    const user = 'urr1'
    const dev1 = await c.provisionDevice('trk-rr1', user)
    const dev2 = await c.provisionDevice('trk-rr2', 'urr2')
    const app = await c.connectApp(n2, await c.token(user, 'app'), `app:${user}`)
    clients.push(app)
    const live: LiveSnapshot[] = []
    app.on('message', (topic, payload) => {
      if (topic === `users/${user}/live`) live.push(JSON.parse(payload.toString()) as LiveSnapshot)
    })
    await app.subscribeAsync(`users/${user}/live`, { qos: 0 })
    const d1 = await c.connectDevice(n1, dev1)
    const d2 = await c.connectDevice(n2, dev2)
    clients.push(d1, d2)
    const s1 = stream(d1, dev1.deviceId)
    const s2 = stream(d2, dev2.deviceId)
    streams.push(s1, s2)

    // Before: the app on node 2 sees its device on node 1 through Redis.
    await waitFor(() => live.length > 0, WAIT, 100)

    // Redis dies. The devices' batches are still acked: each PUBACK follows a PostgreSQL commit on the device's node.
    await stopRedis(redis)
    redis = null
    const down1 = s1.acked.length
    const down2 = s2.acked.length
    await waitFor(() => s1.acked.length >= down1 + 3 && s2.acked.length >= down2 + 3, WAIT, 100)
    expect(d1.connected && d2.connected).toBe(true)

    // Back, empty, at the same address: the outputs flow again (a snapshot of a sample taken after the restart).
    const port = await freePort()
    redis = await startRedis(port)
    proxy?.retarget(port)
    const backAt = Date.now()
    await waitFor(() => live.some((s) => s.t >= backAt), WAIT, 100)
    // Both nodes ready again once their Redis connections are up.
    for (const n of [n1, n2])
      await waitFor(async () => (await fetch(`http://127.0.0.1:${n.ports.http}/readyz`)).status === 200, WAIT, 200)
    s1.stop()
    s2.stop()
    // No process crashed, and every acked sample is stored exactly once.
    for (const n of [n1, n2]) expect(n.proc.exitCode === null && n.proc.signalCode === null).toBe(true)
    for (const [s, id] of [
      [s1, dev1.deviceId],
      [s2, dev2.deviceId],
    ] as const) {
      const r = await c.db.query<{ t: string; n: number }>(
        `SELECT (extract(epoch FROM s.time) * 1000)::float8::text AS t, count(*)::int AS n FROM samples s
           JOIN devices d USING (device_key) WHERE d.device_id = $1 AND s.metric = 1 GROUP BY s.time`,
        [id],
      )
      const stored = new Map(r.rows.map((row) => [Math.round(Number(row.t)), row.n]))
      expect(s.acked.filter((t) => stored.get(t) !== 1)).toEqual([])
    }
  }, 300_000)
})

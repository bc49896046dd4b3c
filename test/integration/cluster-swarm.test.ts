// The device swarm across a cluster of three real broker processes (test/helpers/cluster.ts), addressed directly as
// the simulator's broker lists (`--url a,b,c`): devices spread round-robin and, after losing their link, move on to
// the next node. Mid-run one node is killed with SIGKILL (no goodbye, no flush). Its devices and apps reconnect to
// the others; the simulator's own verification must then find every acked reading stored exactly once, and the
// leaderboard must show the distance a single node would have counted.
//
// "Equal to a single-node run within 1 %", made deterministic: a second run cannot replay the same readings (sample
// times come from the wall clock), but a single node's distance is by construction the sum of the great-circle
// segments between consecutive accepted fixes (src/pipeline/derive.ts), and the accepted fixes are exactly the stored
// positions. So for every consenting runner the board's distance is compared with that sum over the runner's stored
// positions, whatever the interleaving of the kill with batches, leases and ticks. A move that counted a segment twice
// (A→B without B loading the last fix) or lost one (a committed batch whose distance never reached the board) shows
// up as a difference; 1 % of a runner's few dozen metres is well under one 1 Hz segment (~3 m), and the board keeps
// the sum to the metre. The check waits for the condition (the board settles after the last commit, a tick later, and
// after the dead node's leases expire); it never waits for a fixed time.
import { haversineMeters } from '../../src/pipeline/validate.js'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ephemeralConfig } from '../../broker.config.js'
import { boardPrefix, RedisLeaderboard } from '../../src/outputs/leaderboard.js'
import type { LeaderboardMessage } from '../../src/outputs/payloads.js'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import { type ClusterNode, JWT_SECRET, metricValue, startCluster, type TestCluster } from '../helpers/cluster.js'
import { REDIS_URL, waitFor } from '../helpers/harness.js'

const EVENT = 'sim-marathon'
const WAIT = 180_000 // conditions, not delays: generous because several suites may share two cores

let c: TestCluster
let report: SwarmReport
let victim: ClusterNode
let killedAfterBatches = 0
let board: LeaderboardMessage | null = null
let watcher: MqttClient | null = null
const batchesOf = async (n: ClusterNode) => metricValue(await c.metrics(n), 'pulsegate_ingest_batches_total')

/** Per runner: the distance a single node derives from the stored fixes (consecutive great-circle segments). */
async function storedDistances(): Promise<Map<string, number>> {
  const r = await c.db.query<{ user_id: string; lat: number; lon: number }>(
    `SELECT d.user_id, p.lat, p.lon FROM positions p JOIN devices d USING (device_key)
      WHERE d.device_id LIKE 'sim-%' ORDER BY d.device_id, p.time`,
  )
  const out = new Map<string, number>()
  let prev: { user_id: string; lat: number; lon: number } | null = null
  for (const row of r.rows) {
    if (prev && prev.user_id === row.user_id)
      out.set(row.user_id, (out.get(row.user_id) ?? 0) + haversineMeters(prev.lat, prev.lon, row.lat, row.lon))
    prev = row
  }
  return out
}

async function consenting(): Promise<Set<string>> {
  const r = await c.db.query<{ user_id: string }>(
    'SELECT user_id FROM participants WHERE event_id = $1 AND consent_leaderboard',
    [EVENT],
  )
  return new Set(r.rows.map((x) => x.user_id))
}

const within1pct = (got: number, want: number) => Math.abs(got - want) <= Math.max(1, want * 0.01)

beforeAll(async () => {
  c = await startCluster(3)
  victim = c.nodes[1] as ClusterNode
  const nodes = c.nodes
  let killing: Promise<void> | null = null
  report = await runSwarm({
    devices: 30,
    durationS: 20,
    rampPerS: 30,
    url: nodes.map((n) => `mqtts://127.0.0.1:${n.ports.mqtts}`),
    wsUrl: nodes.map((n) => `ws://127.0.0.1:${n.ports.http}/mqtt`),
    mqttUrl: nodes.map((n) => `mqtt://127.0.0.1:${n.ports.mqtt}`),
    // The brokers' data dir (dev CA, JWT secret) and database: registration and verification go straight to
    // PostgreSQL, as `pulsegate simulate` does with PULSEGATE_DATABASE_URL against brokers in other processes.
    config: ephemeralConfig({ dataDir: c.dataDir, databaseUrl: c.dbUrl, logLevel: 'silent', jwtSecret: JWT_SECRET }),
    appShare: 0.3,
    bridgeShare: 0.1,
    anomalyShare: 0,
    dropOutShare: 0,
    // Ends when every link is up again with nothing left (a condition); this bounds only a cluster that never lets
    // the dead node's devices back in.
    drainS: 120,
    progress: false,
    onPhase: (phase) => {
      if (phase !== 'running') return
      // The kill comes once the victim is committing (a condition, not a time): then it holds live sessions, batches
      // in flight and user states, whenever that is on a loaded machine.
      killing = (async () => {
        await waitFor(async () => (await batchesOf(victim)) >= 3, WAIT, 200)
        killedAfterBatches = await batchesOf(victim).catch(() => 0)
        victim.proc.kill('SIGKILL')
        await victim.exited
      })()
    },
  })
  await killing
}, 600_000)

afterAll(async () => {
  await watcher?.endAsync(true).catch(() => {})
  await c?.stop()
}, 120_000)

describe('swarm across three nodes, one killed with SIGKILL mid-run', () => {
  it('the node died during the run and its devices reconnected to the others', () => {
    expect(victim.proc.signalCode).toBe('SIGKILL')
    expect(killedAfterBatches).toBeGreaterThanOrEqual(3)
    // Devices were spread over the three nodes; the victim's lost their links and came back elsewhere.
    const lost = report.connections.devices.lost + report.connections.bridges.lost
    expect(lost).toBeGreaterThan(0)
    expect(report.connections.devices.reconnects + report.connections.bridges.reconnects).toBeGreaterThanOrEqual(lost)
    expect(report.connections.devices.connected + report.connections.bridges.connected).toBe(report.options.users)
    expect(report.target.mqtts.split(',')).toHaveLength(3)
    expect(report.target.broker).toBe('external')
  })

  it('the survivors committed readings too (the swarm was spread)', async () => {
    for (const n of c.nodes.filter((x) => x !== victim)) expect(await batchesOf(n)).toBeGreaterThan(0)
  })

  it("the simulator's verification: 0 acked readings lost, 0 duplicates", () => {
    const v = report.verification
    expect(v.status, JSON.stringify(v)).toBe('ok')
    expect(v.via).toBe('postgres')
    expect(v.lost).toBe(0)
    expect(v.duplicates).toBe(0)
    expect(v.expected).toBe(report.readings.acked - report.readings.rejected)
    expect(v.expected).toBeGreaterThan(0)
    expect(report.samples.dropped).toBe(0)
    expect(report.samples.bufferedAtEnd).toBe(0)
  })

  it(
    'the leaderboard shows, for every consenting runner, the distance of their stored track within 1 %',
    async () => {
      const survivor = c.nodes[2] as ClusterNode
      const consent = await consenting()
      const stored = await storedDistances()
      // `runners` counts everyone moving; the public ranking only those who consented.
      const moving = [...stored].filter(([, d]) => d > 0).length
      const want = new Map([...stored].filter(([u, d]) => consent.has(u) && d > 0))
      expect(want.size).toBeGreaterThan(0)
      // The whole board (the published message carries the top 10): every runner, their distance.
      const lb = new RedisLeaderboard(REDIS_URL, boardPrefix(c.prefix))
      let last = ''
      try {
        await waitFor(
          async () => {
            const { runners, top } = await lb.top(EVENT, 1000)
            const got = new Map(top.map((e) => [e.userId, e.distanceM]))
            const off = [...want].filter(([u, d]) => !within1pct(got.get(u) ?? 0, d))
            last = `runners ${runners}/${moving}, public ${top.length}/${want.size}; off: ${JSON.stringify(off.map(([u, d]) => [u, d, got.get(u)]))}`
            return runners === moving && top.length === want.size && off.length === 0
          },
          WAIT,
          250,
        ).catch(() => {
          throw new Error(`board never matched the stored tracks: ${last}`)
        })
      } finally {
        await lb.close()
      }
      // And what subscribers see: the retained board on a surviving node agrees (distances rounded to the metre).
      const token = await c.token('sim-u000001', 'app')
      watcher = await c.connectApp(survivor, token, 'app:sim-u000001:board')
      watcher.on('message', (topic, payload) => {
        if (topic === `events/${EVENT}/leaderboard`) board = JSON.parse(payload.toString()) as LeaderboardMessage
      })
      await watcher.subscribeAsync(`events/${EVENT}/leaderboard`, { qos: 0 })
      await waitFor(
        () =>
          board !== null &&
          board.runners === moving &&
          board.top.length === Math.min(10, want.size) &&
          board.top.every((e) => within1pct(e.distanceM, want.get(e.userId) ?? -100)),
        WAIT,
        100,
      ).catch(() => {
        throw new Error(`published board never matched: ${JSON.stringify(board)}`)
      })
    },
    WAIT + 60_000,
  )
})

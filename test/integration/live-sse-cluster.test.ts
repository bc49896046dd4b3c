// Live streams in cluster mode: two broker processes on one PostgreSQL and Redis. The devices run on node 1; the board
// (published by whichever node leads the boards) reaches SSE clients of both nodes, and node 2's snapshot endpoint
// answers from the retained message in Redis. One computation, every node's spectators.
import crypto from 'node:crypto'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LeaderboardMessage } from '../../src/outputs/payloads.js'
import { startCluster, type TestCluster } from '../helpers/cluster.js'
import type { DeviceCreds } from '../helpers/harness.js'
import { type CurlStream, curlSse } from '../helpers/sse.js'

const EV = `clive-${crypto.randomBytes(4).toString('hex')}`
const M_PER_DEG = 111_195

describe('live streams across a cluster', () => {
  let c: TestCluster
  const creds: DeviceCreds[] = []
  const devs: MqttClient[] = []
  const curls: CurlStream[] = []
  let step = 0
  const t0 = Date.now() - 30 * 60_000

  beforeAll(async () => {
    c = await startCluster(2)
    await c.registry.createEvent({ eventId: EV, isPublic: true, startsAt: new Date(Date.now() - 3600_000) })
    for (let i = 0; i < 2; i++) {
      const d = await c.provisionDevice(`clive-trk-${i}`, `clive-run-${i}`)
      await c.registry.joinEvent(EV, d.userId, { consentLeaderboard: true, bib: `${i + 1}` })
      creds.push(d)
    }
    for (const d of creds) devs.push(await c.connectDevice(c.nodes[0] as TestCluster['nodes'][number], d))
  }, 120_000)

  afterAll(async () => {
    for (const x of curls) x.stop()
    for (const d of devs) await d.endAsync().catch(() => {})
    await c?.stop()
  })

  it('both nodes stream the board the cluster computes; the other node serves the snapshot', async () => {
    for (const node of c.nodes) {
      const s = curlSse(`http://127.0.0.1:${node.ports.http}/live/events/${EV}/leaderboard`)
      curls.push(s)
    }
    const done = () => curls.every((s) => s.events.length >= 2)
    for (let round = 0; round < 1500 && !done(); round++) {
      const k = step++
      await Promise.all(
        devs.map((d, i) =>
          d.publishAsync(
            `devices/${creds[i]?.deviceId}/readings`,
            JSON.stringify({
              seq: k,
              samples: [
                { t: t0 + k * 1000, lat: 52.4 + ((3 + i) * k) / M_PER_DEG, lon: 13.3, acc: 4 },
                { t: t0 + k * 1000 + 1, hr: 150 },
              ],
            }),
            { qos: 1 },
          ),
        ),
      )
    }
    expect(done()).toBe(true)
    for (const s of curls) {
      const last = JSON.parse(s.events.at(-1)?.data ?? '{}') as LeaderboardMessage
      expect(last.eventId).toBe(EV)
      expect(last.top.map((e) => e.userId).sort()).toEqual(['clive-run-0', 'clive-run-1'])
    }
    const other = c.nodes[1] as TestCluster['nodes'][number]
    const snap = await fetch(`http://127.0.0.1:${other.ports.http}/live/events/${EV}/leaderboard.json`)
    expect(snap.status).toBe(200)
    expect(((await snap.json()) as LeaderboardMessage).eventId).toBe(EV)
  }, 120_000)
})

// Webhooks in cluster mode: two broker processes on one PostgreSQL and Redis, a real HTTPS push endpoint. A user
// whose app is connected to node 2 while their tracker raises an alert through node 1 gets the alert over MQTT and
// no push (node 2 shares the app's presence through Redis); a user with no app anywhere gets the push.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { initPki, pkiPaths } from '../../src/identity/pki.js'
import { type ClusterNode, metricValue, startCluster, type TestCluster } from '../helpers/cluster.js'
import type { DeviceCreds } from '../helpers/harness.js'
import { REDIS_URL, tempDir, waitFor } from '../helpers/harness.js'
import { Receiver } from '../helpers/webhook-receiver.js'

const SECRET = 'webhook-secret-0123456789abcdef-0123456789'
const WAIT = 60_000
const run = crypto.randomBytes(3).toString('hex')

describe('webhooks across a cluster', () => {
  let c: TestCluster
  let receiver: Receiver
  let redis: Redis
  const clients: MqttClient[] = []
  let seq = 1

  beforeAll(async () => {
    const dir = tempDir()
    await initPki(dir)
    const p = pkiPaths(dir)
    receiver = new Receiver({ key: fs.readFileSync(p.serverKey), cert: fs.readFileSync(p.serverCert) })
    await receiver.up()
    c = await startCluster(2, {
      webhook: {
        url: `https://127.0.0.1:${receiver.port}/push`,
        secret: SECRET,
        caFile: path.resolve(p.caCert),
        timeoutMs: 3000,
        backoffBaseMs: 50,
        backoffMaxMs: 600,
        sweepMs: 200,
      },
    })
    redis = new Redis(REDIS_URL)
  }, 240_000)

  afterAll(async () => {
    await Promise.all(clients.map((m) => m.endAsync(true).catch(() => {})))
    await redis?.quit()
    await c?.stop()
    await receiver?.down()
  }, 120_000)

  /** 90 s of SpO2 87 % through node 1 (QoS 1: committed at the PUBACK): opens a spo2_low alert. */
  async function lowSpo2(dev: DeviceCreds): Promise<void> {
    const d = await c.connectDevice(c.nodes[0] as ClusterNode, dev)
    clients.push(d)
    const now = Date.now()
    await d.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({
        seq: seq++,
        samples: [0, 30_000, 60_000, 90_000].map((x) => ({ t: now - 95_000 + x, spo2: 87 })),
      }),
      { qos: 1 },
    )
  }

  const skipped = async () => {
    let n = 0
    for (const node of c.nodes)
      n += metricValue(await c.metrics(node), 'pulsegate_webhook_deliveries_total', {
        kind: 'alert',
        outcome: 'skipped_app_connected',
      })
    return n
  }

  it('an app on the other node spares its user the push; a user without an app gets it', async () => {
    const watched = `wcl-a${run}`
    const alone = `wcl-b${run}`
    const devA = await c.provisionDevice(`wcl-trk-a${run}`, watched)
    const devB = await c.provisionDevice(`wcl-trk-b${run}`, alone)
    const app = await c.connectApp(c.nodes[1] as ClusterNode, await c.token(watched, 'app'), `app:${watched}`)
    clients.push(app)
    const alerts: string[] = []
    app.on('message', (topic) => alerts.push(topic))
    await app.subscribeAsync(`users/${watched}/alerts`, { qos: 1 })
    // Node 2 has written the app's presence (the push decision on node 1 reads it).
    await waitFor(
      async () => (await redis.zrangebyscore(`${c.prefix}:presence:${watched}`, Date.now(), '+inf')).length > 0,
      WAIT,
    )
    const before = await skipped()
    await lowSpo2(devA)
    await lowSpo2(devB)
    // The control: the push to the user without an app arrives, so webhooks work in this cluster.
    await waitFor(() => receiver.of(alone).length > 0, WAIT)
    await waitFor(() => alerts.length > 0, WAIT)
    await waitFor(async () => (await skipped()) > before, WAIT)
    expect(receiver.of(watched)).toEqual([])
    // The app leaves: node 2 takes its entry away at once (no push decision waits for the TTL).
    await app.endAsync()
    await waitFor(
      async () => (await redis.zrangebyscore(`${c.prefix}:presence:${watched}`, Date.now(), '+inf')).length === 0,
      WAIT,
    )
  }, 180_000)
})

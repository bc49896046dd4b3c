// The embedded store across a crash of the broker process: readings acknowledged by a broker killed with SIGKILL
// right after the last PUBACK (no shutdown, no flush) are all there when the store is opened again, once each.
// (What this covers and what it does not: the process's crash. PGlite writes through Emscripten's NODEFS and never
// calls fsync, so a power loss or a kernel crash is not covered; README "Sizing", docs/readings.md.)
import type { ChildProcess } from 'node:child_process'
import mqtt from 'mqtt'
import { afterAll, describe, expect, it } from 'vitest'
import { spawnNode } from '../helpers/cluster.js'
import { type DeviceCreds, provisionDevice, startTestBroker, type TestBroker } from '../helpers/harness.js'

describe('the embedded store after the broker process is killed (SIGKILL)', () => {
  let tb: TestBroker | null = null
  let child: ChildProcess | null = null
  afterAll(async () => {
    child?.kill('SIGKILL')
    await tb?.stop()
  })

  it('keeps every reading acknowledged before the kill, once', async () => {
    // provision in this process, then hand the data dir (PKI, registry, store) to a broker process of its own
    const setup = await startTestBroker('embedded')
    const dev: DeviceCreds = await provisionDevice(setup, 'crash-1', 'crash-user')
    const dataDir = setup.dataDir
    const ca = setup.ca
    await setup.stop()

    const broker = await spawnNode('crash', { dataDir, databaseUrl: '', overrides: {} })
    child = broker.proc
    const client = await mqtt.connectAsync(`mqtts://127.0.0.1:${broker.ports.mqtts}`, {
      clientId: dev.deviceId,
      key: dev.key,
      cert: dev.cert,
      ca,
      servername: 'localhost',
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 15_000,
    })
    const t0 = Date.now() - 300_000
    const batches = 40
    const perBatch = 25
    // QoS 1, several in flight at once: each resolves on its PUBACK, which comes after the commit
    await Promise.all(
      Array.from({ length: batches }, (_, b) =>
        client.publishAsync(
          'devices/crash-1/readings',
          JSON.stringify({
            seq: b + 1,
            samples: Array.from({ length: perBatch }, (_x, k) => ({ t: t0 + (b * perBatch + k) * 100, hr: 60 + k })),
          }),
          { qos: 1 },
        ),
      ),
    )
    const exited = new Promise<NodeJS.Signals | null>((resolve) => broker.proc.once('exit', (_c, sig) => resolve(sig)))
    broker.proc.kill('SIGKILL')
    expect(await exited).toBe('SIGKILL')
    client.end(true)
    child = null

    // the store opens again (its lock's owner is dead) and holds every acknowledged sample, once
    tb = await startTestBroker('embedded', {}, { dataDir })
    const r = await tb.pg.db.query<{ n: number; distinct: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT s.time)::int AS distinct FROM samples s
       JOIN devices d USING (device_key) WHERE d.device_id = 'crash-1' AND s.metric = 1`,
    )
    expect(r.rows[0]).toEqual({ n: batches * perBatch, distinct: batches * perBatch })
  })
})

// pulsegate/client (src/client) against a real broker over WebSocket: it receives a real alert (a tracker's readings
// through mTLS, the alert engine, the consent gate), typed by the server's schemas, and completes a paged delta sync
// whose cursor continues where it stopped.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type AlertMessage, connectPulsegate, PulsegateClient, SyncFailedError } from '../../src/client/index.js'
import {
  connectDevice,
  type DeviceCreds,
  provisionDevice,
  startTestBroker,
  type TestBroker,
  token,
  tempDir,
  waitFor,
} from '../helpers/harness.js'

const root = fileURLToPath(new URL('../..', import.meta.url))

describe('pulsegate/client', () => {
  let tb: TestBroker
  let dev: DeviceCreds
  let device: MqttClient
  const clients: PulsegateClient[] = []
  const invalid: string[] = []

  beforeAll(async () => {
    tb = await startTestBroker('postgres')
    dev = await provisionDevice(tb, 'trk-client-1', 'carol')
    device = await connectDevice(tb, dev)
  }, 60_000)
  afterAll(async () => {
    for (const c of clients) await c.close().catch(() => {})
    await device?.endAsync()
    await tb?.stop()
  })

  const connect = async (userId = 'carol') => {
    const c = await connectPulsegate({
      url: `ws://127.0.0.1:${tb.pg.ports.http}/mqtt`,
      userId,
      token: await token(tb, userId, 'app'),
      mqtt: { reconnectPeriod: 0, connectTimeout: 15_000 },
      onInvalid: (topic, err) => invalid.push(`${topic}: ${err.message}`),
    })
    clients.push(c)
    return c
  }

  it('receives an alert, typed, as the broker raised it', async () => {
    const client = await connect()
    const alerts: AlertMessage[] = []
    await client.onAlert((a) => alerts.push(a))
    const now = Date.now()
    // 11 minutes at rest with HR 130: a sustained-high-HR episode.
    const samples = Array.from({ length: 67 }, (_, i) => ({ t: now - 660_000 + i * 10_000, hr: 130 }))
    for (let b = 0; b < samples.length; b += 10) {
      await device.publishAsync(
        `devices/${dev.deviceId}/readings`,
        JSON.stringify({ seq: b, samples: samples.slice(b, b + 10) }),
        { qos: 1 },
      )
    }
    const alert = await waitFor(() => alerts[0], 20_000)
    expect(alert).toMatchObject({ kind: 'hr_high', state: 'opened', userId: 'carol', deviceId: dev.deviceId })
    const row = await tb.pg.db.query<{ id: string }>('SELECT id FROM alerts WHERE user_id = $1', ['carol'])
    expect(row.rows.map((r) => r.id)).toContain(alert.id)
    expect(invalid).toEqual([])
  })

  it('completes a delta sync in pages, and continues from its cursor', async () => {
    const client = await connect()
    const full = await client.sync({ limit: 20 })
    const stored = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.user_id = 'carol'`,
    )
    expect(full.readings.length).toBe(stored.rows[0]?.n)
    expect(full.pages).toBeGreaterThan(1)
    expect(full.alerts.map((a) => a.kind)).toContain('hr_high')
    // commit order: one opaque cursor for every kind, and every reading once
    expect(typeof full.cursor).toBe('string')
    expect(new Set(full.readings.map((r) => r.id)).size).toBe(full.readings.length)

    // Nothing new since: one empty page. Then a new reading: exactly that one.
    const again = await client.sync({ cursor: full.cursor })
    expect(again).toMatchObject({ readings: [], alerts: [], pages: 1 })
    await device.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({ seq: 500, samples: [{ t: Date.now() + 1000, hr: 88 }] }),
      { qos: 1 },
    )
    const next = await client.sync({ cursor: again.cursor, kinds: ['readings'] })
    expect(next.readings).toHaveLength(1)
    expect(next.readings[0]).toMatchObject({ device: dev.deviceId, metric: 'hr', value: 88 })
    expect(invalid).toEqual([])
    // HR back to 88 resolves the episode, in the output engine after the PUBACK: wait for it here, so the example's
    // runs below see it in the first run (or before), never between the two.
    await waitFor(async () => {
      const r = await tb.pg.db.query(`SELECT 1 FROM alerts WHERE user_id = 'carol' AND resolved_at IS NOT NULL`)
      return r.rows.length > 0 ? true : null
    }, 20_000)
  })

  it('a refused request is a SyncFailedError saying why; another user’s topics are refused', async () => {
    const client = await connect()
    await expect(client.syncPage({ limit: 0 })).rejects.toThrow(SyncFailedError)
    const mallory = await connect('mallory')
    // mallory's client subscribes to mallory's topics; carol's are out of reach for its token.
    const spy = new PulsegateClient(mallory.mqtt, 'carol')
    await expect(spy.onAlert(() => {})).rejects.toThrow(/refused/)
  })

  it('the example (src/client/example.ts) runs: syncs, keeps its cursor, gets a late upload, and stops on SIGINT', async () => {
    const cursorFile = path.join(tempDir('pulsegate-example-'), 'cursor.json')
    const url = `ws://127.0.0.1:${tb.pg.ports.http}/mqtt`
    const run = async () => {
      const child = spawn(
        process.execPath,
        [
          '--import',
          './test/helpers/ts-loader.mjs',
          'src/client/example.ts',
          url,
          'carol',
          await token(tb, 'carol', 'app'),
          cursorFile,
        ],
        { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
      )
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
      })
      child.stderr.on('data', (d: Buffer) => {
        out += d.toString()
      })
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
      const line = await waitFor(() => /synced (\d+) readings, (\d+) alerts/.exec(out), 60_000).catch((e: Error) => {
        child.kill('SIGKILL')
        throw new Error(`${e.message}: ${out}`)
      })
      child.kill('SIGINT')
      expect(await exited).toBe(0)
      return { readings: Number(line[1]), alerts: Number(line[2]) }
    }
    const first = await run()
    expect(first.readings).toBeGreaterThan(60)
    expect(first.alerts).toBeGreaterThanOrEqual(1)
    // the commit-order cursor (opaque), not the per-kind time cursors that miss late uploads
    expect(typeof JSON.parse(fs.readFileSync(cursorFile, 'utf8'))).toBe('string')
    // The second run continues from the saved cursor: nothing new.
    expect(await run()).toEqual({ readings: 0, alerts: 0 })
    // A late upload (measured 20 minutes ago, before everything the first run saw): the next run gets exactly it.
    await device.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({ seq: 600, samples: [{ t: Date.now() - 1_200_000, hr: 70 }] }),
      { qos: 1 },
    )
    expect(await run()).toEqual({ readings: 1, alerts: 0 })
  }, 150_000)
})

// The brownout's hysteresis and device choice on explicit samples (latency, queue, time): enter only after the
// pressure has held for enter.forMs, leave only after it has stayed below the (lower) leave thresholds for
// leave.forMs, the busiest devices first, earlier configs put back, someone else's newer config left alone.
import { Readable } from 'node:stream'
import type { Client, PublishPacket } from 'aedes'
import { Histogram, Registry } from 'prom-client'
import { describe, expect, it, vi } from 'vitest'
import { ConfigError, defaults, loadConfig } from '../../broker.config.js'
import { Brownout, type BrownoutSettings } from '../../src/limits/brownout.js'
import { createLogger } from '../../src/log.js'

const SETTINGS: BrownoutSettings = {
  ...defaults().limits.brownout,
  enabled: true,
  enter: { commitLatencyMs: 1000, queueRows: 5000, forMs: 3000 },
  leave: { commitLatencyMs: 200, queueRows: 500, forMs: 5000 },
  batchEvery: 60,
  normalBatchEvery: 5,
  maxDevices: 2,
  rankWindowMs: 10_000,
}

function setup(settings: BrownoutSettings = SETTINGS) {
  const retained = new Map<string, string>()
  const published: { topic: string; payload: Record<string, unknown> }[] = []
  const registry = new Registry()
  const brownout = new Brownout({
    settings,
    writer: { oldestWaitingMs: 0, queuedRows: 0 },
    persistence: {
      createRetainedStreamCombi: ([topic]) => {
        const p = retained.get(topic as string)
        return Readable.from(p === undefined ? [] : [{ topic, payload: Buffer.from(p) }])
      },
    },
    publish: (topic, payload) => {
      retained.set(topic, payload)
      published.push({ topic, payload: JSON.parse(payload) as Record<string, unknown> })
    },
    metrics: { registry, commitLatency: new Histogram({ name: 'h', help: 'h', registers: [] }) },
    log: createLogger('silent'),
  })
  const send = (deviceId: string, n: number, clientId = deviceId) => {
    for (let i = 0; i < n; i++)
      brownout.onPublish({ topic: `devices/${deviceId}/readings` } as PublishPacket, { id: clientId } as Client)
  }
  const metric = async (name: string, labels: Record<string, string> = {}) => {
    const m = (await registry.getSingleMetric(name)?.get())?.values ?? []
    return m.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0)
  }
  return { brownout, retained, published, send, metric }
}

describe('brownout hysteresis', () => {
  it('enters only after the pressure held for enter.forMs; a dip starts the clock again', async () => {
    const { brownout, metric } = setup()
    brownout.sample(1500, 0, 0)
    brownout.sample(1500, 0, 2000)
    brownout.sample(900, 0, 2500) // below the enter threshold: the clock starts again
    brownout.sample(1500, 0, 3000)
    brownout.sample(1500, 0, 5900)
    expect(brownout.isActive).toBe(false)
    brownout.sample(10, 6000, 6000) // the queue alone is pressure too
    expect(brownout.isActive).toBe(true)
    expect(await metric('pulsegate_brownout_active')).toBe(1)
    expect(await metric('pulsegate_brownout_transitions_total', { to: 'brownout' })).toBe(1)
  })

  it('leaves only below the leave thresholds (not merely below enter) for leave.forMs', async () => {
    const { brownout, metric } = setup()
    brownout.sample(2000, 0, 0)
    brownout.sample(2000, 0, 3000)
    expect(brownout.isActive).toBe(true)
    // Between leave and enter: still in brownout however long it lasts.
    for (let t = 4000; t <= 20_000; t += 1000) brownout.sample(500, 0, t)
    expect(brownout.isActive).toBe(true)
    brownout.sample(100, 0, 21_000)
    brownout.sample(100, 600, 23_000) // queue above leave.queueRows: the clock starts again
    brownout.sample(100, 0, 24_000)
    brownout.sample(100, 0, 28_900)
    expect(brownout.isActive).toBe(true)
    brownout.sample(100, 0, 29_000)
    expect(brownout.isActive).toBe(false)
    expect(await metric('pulsegate_brownout_transitions_total', { to: 'normal' })).toBe(1)
    expect(await metric('pulsegate_brownout_active')).toBe(0)
  })
})

describe('brownout configs', () => {
  it('throttles the busiest devices, then restores their earlier config (or the normal one)', async () => {
    const { brownout, retained, published, send, metric } = setup()
    retained.set('devices/a/config', JSON.stringify({ intervalMs: 500, batchEvery: 2 }))
    send('a', 5)
    send('b', 3)
    send('c', 1)
    send('d', 50, 'intruder') // someone else's topic does not count
    brownout.sample(2000, 0, 0)
    brownout.sample(2000, 0, 3000)
    await vi.waitFor(() => expect(published).toHaveLength(2))
    expect(published.map((p) => p.topic).sort()).toEqual(['devices/a/config', 'devices/b/config'])
    expect(JSON.parse(retained.get('devices/a/config') as string)).toEqual({
      intervalMs: 500,
      batchEvery: 60,
      brownout: true,
    })
    expect(JSON.parse(retained.get('devices/b/config') as string)).toEqual({ batchEvery: 60, brownout: true })
    expect(await metric('pulsegate_brownout_devices_throttled')).toBe(2)

    // An operator changes b's config during the brownout: theirs stands after it.
    retained.set('devices/b/config', JSON.stringify({ batchEvery: 10 }))
    brownout.sample(100, 0, 4000)
    brownout.sample(100, 0, 9000)
    expect(brownout.isActive).toBe(false)
    await vi.waitFor(async () => expect(await metric('pulsegate_brownout_devices_throttled')).toBe(0))
    expect(JSON.parse(retained.get('devices/a/config') as string)).toEqual({ intervalMs: 500, batchEvery: 2 })
    expect(JSON.parse(retained.get('devices/b/config') as string)).toEqual({ batchEvery: 10 })
    expect(await metric('pulsegate_brownout_configs_total', { kind: 'restore' })).toBe(1)
    expect(await metric('pulsegate_brownout_configs_total', { kind: 'skipped' })).toBe(1)
  })

  it('a leftover brownout config (a node stopped mid-brownout) is not taken for the normal one', async () => {
    const { brownout, retained, send, metric } = setup()
    retained.set('devices/a/config', JSON.stringify({ batchEvery: 60, brownout: true }))
    send('a', 1)
    brownout.sample(2000, 0, 0)
    brownout.sample(2000, 0, 3000)
    await vi.waitFor(async () => expect(await metric('pulsegate_brownout_devices_throttled')).toBe(1))
    brownout.sample(0, 0, 4000)
    brownout.sample(0, 0, 9000)
    await vi.waitFor(() => expect(JSON.parse(retained.get('devices/a/config') as string)).toEqual({ batchEvery: 5 }))
  })
})

describe('brownout settings', () => {
  it('are read from PULSEGATE_BROWNOUT_*, and leave thresholds above enter ones are refused', () => {
    const c = loadConfig(
      {},
      {
        PULSEGATE_BROWNOUT_ENABLED: 'true',
        PULSEGATE_BROWNOUT_ENTER_LATENCY_MS: '3000',
        PULSEGATE_BROWNOUT_LEAVE_FOR_MS: '60000',
        PULSEGATE_BROWNOUT_BATCH_EVERY: '120',
      },
    ).limits.brownout
    expect(c.enabled).toBe(true)
    expect(c.enter.commitLatencyMs).toBe(3000)
    expect(c.leave.forMs).toBe(60_000)
    expect(c.batchEvery).toBe(120)
    expect(defaults().limits.brownout.enabled).toBe(false)
    expect(() => loadConfig({}, { PULSEGATE_BROWNOUT_LEAVE_LATENCY_MS: '5000' })).toThrow(ConfigError)
    expect(() => loadConfig({}, { PULSEGATE_BROWNOUT_BATCH_EVERY: '601' })).toThrow(ConfigError)
  })
})

// The token bucket and the publish limiter on a fake clock: exact release order, drops, and the abuse verdict.
import type { Client, PublishPacket } from 'aedes'
import { Registry } from 'prom-client'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { TokenBucket } from '../../src/limits/bucket.js'
import { createLimitMetrics } from '../../src/limits/metrics.js'
import { PublishLimiter } from '../../src/limits/publish-limiter.js'
import { createLogger } from '../../src/log.js'

describe('TokenBucket', () => {
  it('gives its burst at once, then the rate', () => {
    const b = new TokenBucket(10, 3, 0)
    for (let i = 0; i < 3; i++) {
      expect(b.waitMs(1, 0)).toBe(0)
      b.take(1, 0)
    }
    expect(b.waitMs(1, 0)).toBe(100)
    expect(b.waitMs(1, 100)).toBe(0)
  })

  it('a cost above the burst needs a full bucket and leaves a debt', () => {
    const b = new TokenBucket(100, 50, 0)
    b.take(10, 0)
    expect(b.waitMs(500, 0)).toBe(100)
    expect(b.waitMs(500, 100)).toBe(0)
    b.take(500, 100)
    expect(b.waitMs(1, 100)).toBe(4510)
  })

  it('rate 0 is no limit', () => {
    const b = new TokenBucket(0, 1, 0)
    b.take(1e9, 0)
    expect(b.waitMs(1e9, 0)).toBe(0)
  })
})

describe('PublishLimiter', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 })
  })
  afterEach(() => {
    vi.useRealTimers()
  })

  const rate = { messagesPerSec: 10, messageBurst: 2, bytesPerSec: 0, byteBurst: 1 }
  const setup = (abuse = { factor: 3, windowMs: 1000 }) => {
    const metrics = createLimitMetrics(new Registry())
    const dropped: PublishPacket[] = []
    const limiter = new PublishLimiter({
      rates: { device: rate, bridge: rate, app: rate, medic: rate, admin: rate },
      abuse,
      roleOf: () => 'device',
      drop: (p) => dropped.push(p),
      metrics,
      log: createLogger('silent'),
    })
    const client = { id: 'd1', closed: false, close: vi.fn() }
    const passed: number[] = []
    let nextId = 0
    const hook = limiter.wrap((_c, packet, done) => {
      passed.push(packet.messageId ?? -1)
      done()
    })
    const publish = (n: number, qos: 0 | 1) => {
      const acks: number[] = []
      for (let i = 0; i < n; i++) {
        const packet = {
          cmd: 'publish',
          topic: 't',
          payload: Buffer.from('x'),
          qos,
          messageId: nextId++,
        } as unknown as PublishPacket
        hook(client as unknown as Client, packet, () => acks.push(i))
      }
      return acks
    }
    return { limiter, metrics, client, passed, dropped, publish }
  }

  it('holds QoS 1 over the burst and releases it in order at the rate', async () => {
    const { passed, publish, metrics } = setup()
    const acks = publish(6, 1)
    expect(acks).toEqual([0, 1])
    await vi.advanceTimersByTimeAsync(100)
    expect(acks).toEqual([0, 1, 2])
    await vi.advanceTimersByTimeAsync(300)
    expect(acks).toEqual([0, 1, 2, 3, 4, 5])
    expect(passed).toEqual([0, 1, 2, 3, 4, 5])
    expect((await metrics.throttled.get()).values[0]?.value).toBe(4)
    expect((await metrics.throttleQueue.get()).values[0]?.value).toBe(0)
  })

  it('drops QoS 0 over the limit (acked to Aedes, marked dropped, never passed on)', () => {
    const { passed, dropped, publish } = setup()
    const acks = publish(5, 0)
    expect(acks).toHaveLength(5)
    expect(passed).toHaveLength(2)
    expect(dropped).toHaveLength(3)
  })

  it("a closing client's will is never held or dropped", () => {
    const { client, passed, publish } = setup()
    publish(2, 0)
    client.closed = true
    expect(publish(3, 1)).toHaveLength(3)
    expect(passed).toHaveLength(5)
  })

  it('disconnects only when a whole window was far over the limit and the flood goes on', async () => {
    // threshold: (3 − 1) × 10/s × 1 s = 20 over-limit publishes in a window
    const { client, publish } = setup()
    publish(2 + 25, 0) // burst + 25 over, within the first window
    expect(client.close).not.toHaveBeenCalled()
    vi.setSystemTime(Date.now() + 1000)
    publish(30, 0) // 10 pass on the refill; the 11th is the first over-limit publish after the window
    expect(client.close).toHaveBeenCalledTimes(1)
  })

  it('a burst below the threshold, or one followed by silence, is not abuse', () => {
    const a = setup()
    a.publish(2 + 15, 0)
    vi.setSystemTime(Date.now() + 1000)
    a.publish(30, 0)
    expect(a.client.close).not.toHaveBeenCalled()
    const b = setup()
    b.publish(2 + 25, 0)
    vi.setSystemTime(Date.now() + 5000) // the abusive window is long past: a fresh start
    b.publish(40, 0)
    expect(b.client.close).not.toHaveBeenCalled()
  })
})

// Load-adaptive edge throttling (brownout). When the database falls behind — commit latency or rows queued for it
// above `enter` for `enter.forMs` — the busiest devices are sent a retained devices/{id}/config asking for longer
// batches; when the pressure has been below `leave` for `leave.forMs` their earlier config is put back. Every
// message costs the broker about the same (TLS record, MQTT packet, authorization, decode, one commit waiter, one
// PUBACK) whatever its sample count, so fewer, larger batches relieve it; the readings still all arrive, and the
// firmware's priority rule still sends anomalies at once. See docs/limits.md.
import type { Readable } from 'node:stream'
import type { Aedes, Client, PublishPacket } from 'aedes'
import type { Histogram, Registry } from 'prom-client'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import { topicFor } from '../topics/grammar.js'
import { type BrownoutMetrics, createBrownoutMetrics } from './metrics.js'

export type BrownoutSettings = BrokerConfig['limits']['brownout']

/** What the brownout reads of the group-commit writer (src/pipeline/commit.ts). */
export interface PressureSource {
  readonly oldestWaitingMs: number
  readonly queuedRows: number
}

/** Aedes' persistence, memory or Redis: a device's retained config is read before it is replaced. */
export interface RetainedReader {
  createRetainedStreamCombi(patterns: string[]): Readable
}

export interface BrownoutDeps {
  settings: BrownoutSettings
  writer: PressureSource
  persistence: RetainedReader
  publish(topic: string, payload: string, qos: 0 | 1, retain: boolean): void
  /** the broker's metrics: the commit-latency histogram (enqueue → commit) is read for its mean between samples */
  metrics: { registry: Registry; commitLatency: Histogram }
  log: Logger
}

/** Marks the brownout's own payloads, so a leftover one (a node stopped mid-brownout) is never taken for a normal config. */
const MARK = 'brownout'

interface Throttled {
  /** the retained config before the brownout, JSON text; null when the device had none */
  previous: string | null
  payload: string
}

type Op = { kind: 'throttle' | 'restore'; deviceId: string }

const READINGS_PREFIX = 'devices/'
const READINGS_SUFFIX = '/readings'
const BRIDGE_PREFIX = 'bridge:'

export class Brownout {
  readonly metrics: BrownoutMetrics
  private active = false
  private overSince: number | null = null
  private underSince: number | null = null
  /** readings messages per device id in the current and the previous rank window */
  private counts = new Map<string, number>()
  private previousCounts = new Map<string, number>()
  private windowStart = Date.now()
  private readonly throttled = new Map<string, Throttled>()
  /** devices with a throttle op queued or done in this brownout */
  private readonly chosen = new Set<string>()
  private readonly ops: Op[] = []
  private working = false
  private timer: NodeJS.Timeout | null = null
  /** the histogram's sum and count at the last sample */
  private seen = { sum: 0, count: 0 }

  constructor(private readonly d: BrownoutDeps) {
    this.metrics = createBrownoutMetrics(d.metrics.registry)
    this.metrics.state.set(0)
  }

  get isActive(): boolean {
    return this.active
  }

  /**
   * A readings message arrived (counted for the ranking). Counted on arrival, before it is authorized and committed:
   * a stalled database commits nothing, and the load is what arrives. Only a device's own topic (its client id is
   * its device id) or a phone bridge's counts, so nobody can get another device throttled.
   */
  onPublish(packet: PublishPacket, client: Client | null): void {
    if (!client) return
    const t = packet.topic
    if (!t.startsWith(READINGS_PREFIX) || !t.endsWith(READINGS_SUFFIX)) return
    const id = t.slice(READINGS_PREFIX.length, t.length - READINGS_SUFFIX.length)
    if (client.id !== id && !client.id.startsWith(BRIDGE_PREFIX)) return
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1)
  }

  start(): void {
    this.timer = setInterval(() => void this.tick(), this.d.settings.sampleMs)
    this.timer.unref()
  }

  private async tick(): Promise<void> {
    try {
      this.sample(await this.commitLatencyMs(), this.d.writer.queuedRows)
    } catch (err) {
      this.d.log.warn({ err: (err as Error).message }, 'brownout: sampling failed')
    }
  }

  /**
   * Mean enqueue→commit time of the batches settled since the last sample, or the age of the oldest batch still
   * waiting when that is longer: a stalled database settles nothing, and its latency must still show.
   */
  private async commitLatencyMs(): Promise<number> {
    let sum = 0
    let count = 0
    for (const v of (await this.d.metrics.commitLatency.get()).values) {
      if (v.metricName?.endsWith('_sum')) sum += v.value
      else if (v.metricName?.endsWith('_count')) count += v.value
    }
    const n = count - this.seen.count
    const mean = n > 0 ? ((sum - this.seen.sum) / n) * 1000 : 0
    this.seen = { sum, count }
    return Math.max(mean, this.d.writer.oldestWaitingMs)
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }

  /** One look at the pressure: the hysteresis decides, the ranking follows, the op queue publishes. */
  sample(latency: number, queued: number, now = Date.now()): void {
    const s = this.d.settings
    this.metrics.latency.set(latency / 1000)
    if (now - this.windowStart >= s.rankWindowMs) {
      this.previousCounts = this.counts
      this.counts = new Map()
      this.windowStart = now
    }
    if (!this.active) {
      const over = latency > s.enter.commitLatencyMs || queued > s.enter.queueRows
      this.overSince = over ? (this.overSince ?? now) : null
      if (this.overSince !== null && now - this.overSince >= s.enter.forMs) this.enter(latency, queued)
    } else {
      const under = latency < s.leave.commitLatencyMs && queued < s.leave.queueRows
      this.underSince = under ? (this.underSince ?? now) : null
      if (this.underSince !== null && now - this.underSince >= s.leave.forMs) this.leave(latency, queued)
      // Devices that became busy (or connected) during the brownout join it.
      else this.choose()
    }
  }

  private enter(latency: number, queued: number): void {
    this.active = true
    this.overSince = null
    this.metrics.state.set(1)
    this.metrics.transitions.inc({ to: 'brownout' })
    this.d.log.warn(
      { commitLatencyMs: Math.round(latency), queuedRows: queued },
      'brownout: database under pressure, asking the busiest devices for longer batches',
    )
    this.choose()
  }

  private leave(latency: number, queued: number): void {
    this.active = false
    this.underSince = null
    this.metrics.state.set(0)
    this.metrics.transitions.inc({ to: 'normal' })
    this.d.log.info(
      { commitLatencyMs: Math.round(latency), queuedRows: queued, devices: this.throttled.size },
      'brownout over: restoring device configs',
    )
    this.chosen.clear()
    // Throttles still queued are dropped by the op itself (it checks the state); every throttled device is restored.
    for (const deviceId of this.throttled.keys()) this.ops.push({ kind: 'restore', deviceId })
    void this.work()
  }

  /** The busiest devices of the last two rank windows, up to maxDevices in all. */
  private choose(): void {
    const room = this.d.settings.maxDevices - this.chosen.size
    if (room <= 0) return
    const rate = new Map(this.previousCounts)
    for (const [id, n] of this.counts) rate.set(id, (rate.get(id) ?? 0) + n)
    const candidates = [...rate].filter(([id]) => !this.chosen.has(id)).sort((a, b) => b[1] - a[1])
    for (const [deviceId] of candidates.slice(0, room)) {
      this.chosen.add(deviceId)
      this.ops.push({ kind: 'throttle', deviceId })
    }
    void this.work()
  }

  /** One op at a time, in order: a restore queued after a throttle of the same device always runs after it. */
  private async work(): Promise<void> {
    if (this.working) return
    this.working = true
    try {
      for (let op = this.ops.shift(); op; op = this.ops.shift()) {
        try {
          if (op.kind === 'throttle') await this.throttle(op.deviceId)
          else await this.restore(op.deviceId)
        } catch (err) {
          this.d.log.warn(
            { err: (err as Error).message, deviceId: op.deviceId, op: op.kind },
            'brownout: config op failed',
          )
        }
      }
    } finally {
      this.working = false
    }
  }

  private async throttle(deviceId: string): Promise<void> {
    if (!this.active || this.throttled.has(deviceId)) return
    const topic = topicFor.config(deviceId)
    const current = await this.readRetained(topic)
    if (!this.active) return
    const previous = current !== null && !isOurs(current) ? current : null
    const base = previous !== null ? parseConfig(previous) : {}
    const own = typeof base.batchEvery === 'number' ? base.batchEvery : 0
    const payload = JSON.stringify({ ...base, batchEvery: Math.max(own, this.d.settings.batchEvery), [MARK]: true })
    this.throttled.set(deviceId, { previous, payload })
    this.metrics.devices.set(this.throttled.size)
    this.metrics.configs.inc({ kind: 'throttle' })
    this.d.publish(topic, payload, 1, true)
  }

  private async restore(deviceId: string): Promise<void> {
    const entry = this.throttled.get(deviceId)
    if (!entry || this.active) return
    const topic = topicFor.config(deviceId)
    const current = await this.readRetained(topic)
    this.throttled.delete(deviceId)
    this.metrics.devices.set(this.throttled.size)
    // Someone (an operator, another node's brownout) replaced it meanwhile: theirs stands.
    if (current !== null && current !== entry.payload) {
      this.metrics.configs.inc({ kind: 'skipped' })
      return
    }
    this.metrics.configs.inc({ kind: 'restore' })
    this.d.publish(topic, entry.previous ?? JSON.stringify({ batchEvery: this.d.settings.normalBatchEvery }), 1, true)
  }

  private async readRetained(topic: string): Promise<string | null> {
    for await (const packet of this.d.persistence.createRetainedStreamCombi([topic])) {
      const p = (packet as { payload: Buffer | string }).payload
      return typeof p === 'string' ? p : p.toString('utf8')
    }
    return null
  }
}

function parseConfig(text: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(text)
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {}
  } catch {
    return {}
  }
}

function isOurs(text: string): boolean {
  return parseConfig(text)[MARK] === true
}

/** Puts the brownout on a broker (disabled: nothing); it stops with the broker. */
export function installBrownout(aedes: Aedes, deps: BrownoutDeps): Brownout | null {
  if (!deps.settings.enabled) {
    // The state reads 0 on a broker without it, so dashboards need not tell the two apart.
    createBrownoutMetrics(deps.metrics.registry).state.set(0)
    return null
  }
  const brownout = new Brownout(deps)
  // Readings never reach Aedes' 'publish' event (ConsumedRouting skips routing them): they are seen at authorization.
  const authorize = aedes.authorizePublish
  aedes.authorizePublish = (client, packet, done) => {
    brownout.onPublish(packet, client)
    authorize.call(aedes, client, packet, done)
  }
  aedes.on('closed', () => brownout.stop())
  brownout.start()
  return brownout
}

// One simulated tracker: the sensors (Tracker: samples the Wearer, GPS along the course), the firmware (Firmware:
// per-device seq, batches, a bounded local buffer that drops its oldest batches, adaptive sampling from
// `devices/{id}/config`, priority upload of anomalies) and the radio (Uplink: one MQTT connection, QoS 1 with a capped
// in-flight window, reconnect with exponential backoff and jitter). A phone bridge is an Uplink carrying several
// Firmwares over one JWT connection.
//
// `devices/{id}/config` (retained, JSON) understood here: `{"intervalMs": n, "batchEvery": n}`, both optional:
// sample every intervalMs (200…60000) and send a batch every batchEvery samples (1…600). Anything else is ignored.
import fs from 'node:fs'
import tls from 'node:tls'
import { encode } from 'cbor-x'
import type { Histogram } from 'hdr-histogram-js'
import mqtt, { type IClientOptions, MqttClient } from 'mqtt'
import type { Course } from './course.js'
import { Rng, type Wearer } from './physiology.js'
import { type Counters, type DeviceReadings, type Format, pick, type ReadingMetric, TimeRuns } from './protocol.js'

/** One sample object as published (docs/readings.md); absent keys are omitted, never null. */
export interface SampleOut {
  t: number
  hr?: number
  spo2?: number
  steps?: number
  cadence?: number
  skin_temp?: number
  resp?: number
  lat?: number
  lon?: number
  alt?: number
  acc?: number
}

// Bit i of a sample's mask = reading metric i is present (0 = position, 1…6 = METRICS codes).
const SCALARS: readonly [keyof SampleOut, ReadingMetric][] = [
  ['hr', 1],
  ['spo2', 2],
  ['steps', 3],
  ['cadence', 4],
  ['skin_temp', 5],
  ['resp', 6],
]
const FIELD_METRIC: Record<string, ReadingMetric> = {
  hr: 1,
  spo2: 2,
  steps: 3,
  cadence: 4,
  skin_temp: 5,
  resp: 6,
  lat: 0,
  lon: 0,
  alt: 0,
  acc: 0,
}

export function readingMask(s: SampleOut): number {
  let m = s.lat !== undefined ? 1 : 0
  for (const [k, code] of SCALARS) if (s[k] !== undefined) m |= 1 << code
  return m
}

export function popcount(m: number): number {
  let n = 0
  for (let x = m; x; x &= x - 1) n++
  return n
}

export function encodeBatch(format: Format, seq: number, samples: readonly SampleOut[]): Buffer {
  // cbor-x may hand out views of a reused buffer: copy, the bytes must stay identical for a resend.
  return format === 'cbor' ? Buffer.from(encode({ seq, samples })) : Buffer.from(JSON.stringify({ seq, samples }))
}

const round = (v: number, digits: number) => {
  const f = 10 ** digits
  return Math.round(v * f) / f
}

/** The sensors of one device sampling its wearer. */
export class Tracker {
  private readonly rng: Rng
  private stepCarry = 0
  private lastSpo2 = -Infinity
  private lastSlow = -Infinity
  // GPS error as a slowly wandering offset (metres east/north), so implied speeds stay plausible.
  private gpsE = 0
  private gpsN = 0

  constructor(
    readonly wearer: Wearer,
    readonly kind: 'watch' | 'strap',
    readonly primary: boolean,
    private readonly course: Course | null,
    seed: number,
  ) {
    this.rng = new Rng(seed)
  }

  sample(t: number, dtS: number): SampleOut {
    const s = this.wearer.advanceTo(t)
    const out: SampleOut = { t }
    const hrLost = s.anomaly === 'sensor_loss' && this.primary
    if (!hrLost) out.hr = Math.round(s.hr + this.rng.normal(0, 0.7))
    if (this.kind === 'strap') return out

    this.stepCarry += (s.cadence / 60) * dtS
    const steps = Math.floor(this.stepCarry)
    this.stepCarry -= steps
    out.steps = steps
    out.cadence = Math.round(s.cadence)
    // Pulse oximetry spot checks: every 5 s, every sample once it reads low.
    if (t - this.lastSpo2 >= 5000 || s.spo2 < 92) {
      out.spo2 = Math.round(s.spo2)
      this.lastSpo2 = t
    }
    if (t - this.lastSlow >= 30_000) {
      out.skin_temp = round(s.skinTemp, 1)
      out.resp = Math.round(s.resp)
      this.lastSlow = t
    }
    if (this.course) {
      const a = Math.exp(-dtS / 20)
      const sd = 2.5 * Math.sqrt(1 - a * a)
      this.gpsE = this.gpsE * a + this.rng.normal(0, sd)
      this.gpsN = this.gpsN * a + this.rng.normal(0, sd)
      const p = this.course.positionAt(s.distanceM)
      const lat = p.lat + this.gpsN / 111_195
      const lon = p.lon + this.gpsE / (111_195 * Math.cos((p.lat * Math.PI) / 180))
      out.lat = round(lat, 7)
      out.lon = round(lon, 7)
      out.alt = round(p.alt + this.rng.normal(0, 0.5), 1)
      out.acc = round(3 + Math.abs(this.rng.normal(0, 1.5)), 1)
    }
    return out
  }

  /** What the firmware itself can tell is wrong: worth sending at once. */
  anomalous(s: SampleOut): boolean {
    const p = this.wearer.profile
    if (s.hr === undefined) return this.wearer.state.speedMps > 0.5 || this.wearer.state.activity !== 'rest'
    return s.hr < 40 || s.hr > p.maxHr || (s.spo2 !== undefined && s.spo2 < 90) || this.wearer.state.anomaly !== null
  }
}

export interface Batch {
  fw: Firmware
  seq: number
  payload: Buffer
  /** sample times and reading masks, for the acked set and rejection mapping */
  ts: number[]
  masks: number[]
  readings: number
  priority: boolean
  attempts: number
  firstPublishAt: number
}

export interface FirmwareOptions {
  format: Format
  intervalMs: number
  batchEvery: number
  /** samples kept locally (pending + unsent + unacked) before the oldest batches are dropped */
  bufferSamples: number
}

// Rejections arrive around the PUBACK; a few batches back is plenty to map them.
const RECENT_BATCHES = 16
const SENT = Buffer.alloc(0)

/** Batching, seq, the bounded buffer, adaptive sampling; knows nothing about the network. */
export class Firmware {
  seq = 0
  intervalMs: number
  batchEvery: number
  nextSampleAt: number
  sampling = true
  private lastSampleAt: number | null = null
  private pendingTs: number[] = []
  private pendingMasks: number[] = []
  private pendingSamples: SampleOut[] = []
  private pendingPriority = false
  /** urgent (anomaly) batches go out before the backlog */
  readonly urgent: Batch[] = []
  readonly backlog: Batch[] = []
  unackedSamples = 0
  readonly readings: DeviceReadings
  private readonly recent = new Map<number, Batch>()
  /** [tFirst, tLast, firstPublishAt] of recent batches, kept only where alert latency is measured */
  readonly publishLog: number[] | null
  tMin = Number.POSITIVE_INFINITY
  tMax = 0

  constructor(
    readonly deviceId: string,
    readonly tracker: Tracker,
    private readonly opts: FirmwareOptions,
    private readonly counters: Counters,
    startAt: number,
    trackPublishTimes: boolean,
    private readonly onSealed: (b: Batch) => void,
  ) {
    this.intervalMs = opts.intervalMs
    this.batchEvery = opts.batchEvery
    this.nextSampleAt = startAt
    this.readings = { deviceId, acked: {}, rejected: {} }
    this.publishLog = trackPublishTimes ? [] : null
  }

  get bufferedSamples(): number {
    let n = this.pendingTs.length + this.unackedSamples
    for (const b of this.urgent) n += b.ts.length
    for (const b of this.backlog) n += b.ts.length
    return n
  }

  /** Takes the samples due by `now` and seals full batches. Returns the number of samples taken. */
  tick(now: number): number {
    let taken = 0
    while (this.sampling && this.nextSampleAt <= now) {
      const t = Math.round(this.nextSampleAt)
      const dt = this.lastSampleAt === null ? this.intervalMs / 1000 : (t - this.lastSampleAt) / 1000
      this.lastSampleAt = t
      this.nextSampleAt = t + this.intervalMs
      const s = this.tracker.sample(t, dt)
      const mask = readingMask(s)
      this.pendingSamples.push(s)
      this.pendingTs.push(t)
      this.pendingMasks.push(mask)
      if (t < this.tMin) this.tMin = t
      if (t > this.tMax) this.tMax = t
      this.counters.samplesGenerated++
      this.counters.readingsGenerated += popcount(mask)
      taken++
      const urgent = this.tracker.anomalous(s)
      if (urgent) this.pendingPriority = true
      if (urgent || this.pendingTs.length >= this.batchEvery) this.seal()
    }
    return taken
  }

  /**
   * Starts sampling at `t` (a device modelled only from its first link on), on the phase it had from power-on: no
   * backfill of the time before.
   */
  startSamplingAt(t: number): void {
    if (this.nextSampleAt < t)
      this.nextSampleAt += Math.ceil((t - this.nextSampleAt) / this.intervalMs) * this.intervalMs
    this.sampling = true
  }

  /** Seals whatever is pending into a batch (end of run, or a config change). */
  seal(): void {
    if (this.pendingTs.length === 0) return
    this.seq++
    const batch: Batch = {
      fw: this,
      seq: this.seq,
      payload: encodeBatch(this.opts.format, this.seq, this.pendingSamples),
      ts: this.pendingTs,
      masks: this.pendingMasks,
      readings: this.pendingMasks.reduce((n, m) => n + popcount(m), 0),
      priority: this.pendingPriority,
      attempts: 0,
      firstPublishAt: 0,
    }
    this.pendingSamples = []
    this.pendingTs = []
    this.pendingMasks = []
    this.pendingPriority = false
    this.counters.batchesSealed++
    if (batch.priority) {
      this.counters.priorityBatches++
      this.urgent.push(batch)
    } else this.backlog.push(batch)
    this.recent.set(batch.seq, batch)
    if (this.recent.size > RECENT_BATCHES) this.recent.delete(this.recent.keys().next().value as number)
    this.enforceBound()
    this.onSealed(batch)
  }

  private enforceBound(): void {
    let over = this.bufferedSamples - this.opts.bufferSamples
    while (over > 0) {
      // Oldest first: the backlog before urgent batches.
      const victim = this.backlog.shift() ?? this.urgent.shift()
      if (!victim) break
      over -= victim.ts.length
      this.counters.samplesDropped += victim.ts.length
      this.counters.readingsDropped += victim.readings
    }
  }

  /** Next batch to send, urgent first. */
  take(): Batch | undefined {
    return this.urgent.shift() ?? this.backlog.shift()
  }

  /** An unacked batch comes back (connection lost): ahead of newer ones, in seq order. */
  giveBack(b: Batch): void {
    const q = b.priority ? this.urgent : this.backlog
    let i = 0
    while (i < q.length && (q[i] as Batch).seq < b.seq) i++
    q.splice(i, 0, b)
  }

  hasQueued(): boolean {
    return this.urgent.length > 0 || this.backlog.length > 0
  }

  markPublished(b: Batch, at: number): void {
    if (b.firstPublishAt !== 0) return
    b.firstPublishAt = at
    if (this.publishLog) {
      this.publishLog.push(b.ts[0] as number, b.ts[b.ts.length - 1] as number, at)
      if (this.publishLog.length > 3 * 512) this.publishLog.splice(0, 3 * 256)
    }
  }

  /** First publish time of the batch holding sample t, if known. */
  publishedAt(t: number): number | null {
    const log = this.publishLog
    if (!log) return null
    for (let i = log.length - 3; i >= 0; i -= 3) {
      if ((log[i] as number) <= t && t <= (log[i + 1] as number)) return log[i + 2] as number
    }
    return null
  }

  /** The PUBACK arrived (or, for QoS 0, the bytes left): these readings are the device's to expect. */
  delivered(b: Batch): void {
    // Kept only for mapping late rejections: the bytes are no longer needed.
    b.payload = SENT
    this.counters.samplesAcked += b.ts.length
    this.counters.readingsAcked += b.readings
    for (let i = 0; i < b.ts.length; i++) {
      const t = b.ts[i] as number
      const mask = b.masks[i] as number
      for (let m = 0; m <= 6; m++) if (mask & (1 << m)) this.runs('acked', m as ReadingMetric).add(t)
    }
  }

  private runs(which: 'acked' | 'rejected', m: ReadingMetric): TimeRuns {
    const set = this.readings[which]
    let r = set[m]
    if (!r) {
      r = new TimeRuns()
      set[m] = r
    }
    return r
  }

  /** `{seq, reason, field, index}` from devices/{id}/rejections: those readings will not be stored. */
  onRejection(payload: Buffer): void {
    this.counters.rejections++
    let rej: { seq?: unknown; field?: unknown; index?: unknown; reason?: unknown }
    try {
      rej = JSON.parse(payload.toString('utf8')) as typeof rej
    } catch {
      this.counters.rejectionsUnmapped++
      return
    }
    if (rej.reason === 'unknown_field') return
    const b = typeof rej.seq === 'number' ? this.recent.get(rej.seq) : undefined
    if (!b) {
      this.counters.rejectionsUnmapped++
      return
    }
    const indexes = typeof rej.index === 'number' ? [rej.index] : b.ts.map((_, i) => i)
    const field = typeof rej.field === 'string' ? rej.field : null
    for (const i of indexes) {
      const t = b.ts[i]
      const mask = b.masks[i]
      if (t === undefined || mask === undefined) continue
      const only = field !== null && field !== 't' ? FIELD_METRIC[field] : undefined
      for (let m = 0; m <= 6; m++) {
        if (!(mask & (1 << m)) || (only !== undefined && only !== m)) continue
        this.runs('rejected', m as ReadingMetric).add(t)
        this.counters.readingsRejected++
      }
    }
  }

  /** Adaptive sampling from devices/{id}/config. */
  applyConfig(payload: Buffer): void {
    this.counters.configReceived++
    let cfg: { intervalMs?: unknown; batchEvery?: unknown }
    try {
      cfg = JSON.parse(payload.toString('utf8')) as typeof cfg
    } catch {
      return
    }
    if (typeof cfg !== 'object' || cfg === null) return
    let applied = false
    if (typeof cfg.intervalMs === 'number' && cfg.intervalMs >= 200 && cfg.intervalMs <= 60_000) {
      this.intervalMs = Math.round(cfg.intervalMs)
      applied = true
    }
    if (typeof cfg.batchEvery === 'number' && cfg.batchEvery >= 1 && cfg.batchEvery <= 600) {
      this.batchEvery = Math.round(cfg.batchEvery)
      if (this.pendingTs.length >= this.batchEvery) this.seal()
      applied = true
    }
    if (applied) this.counters.configApplied++
  }
}

export interface UplinkEnv {
  counters: Counters
  ackUs: Histogram
  qos: 0 | 1
  inflight: number
  /** shared CA of the broker's certificate */
  ca: Buffer
  /** 127.0.0.x to connect from, when spreading over several source addresses */
  sourceAddress: string | undefined
  /** connection errors by code (CONNACK return code, errno, or message) */
  errors: Record<string, number>
}

/**
 * A device's TLS material as one context. Building it parses the PEM key, certificate and CA (~1 ms and ~33 KB each,
 * measured with 3,000 bench certificates): done per device before the ramp, not on its first connect, where it was a
 * quarter of the load generator's CPU in a 300/s connect ramp.
 */
export function deviceTlsContext(ca: Buffer, keyPath: string, certPath: string): tls.SecureContext {
  return tls.createSecureContext({ ca, key: fs.readFileSync(keyPath, 'utf8'), cert: fs.readFileSync(certPath, 'utf8') })
}

/** `urls`: the brokers this link may use, tried round-robin from `first`, moving on after each lost link */
export type UplinkAuth =
  // The device's key, certificate and the CA, parsed once (deviceTlsContext) as a tracker's firmware holds them.
  | { kind: 'device'; urls: URL[]; first: number; secureContext: tls.SecureContext }
  | { kind: 'bridge'; urls: URL[]; first: number; userId: string; token: string }

const BACKOFF_BASE_MS = 1000
const BACKOFF_CAP_MS = 60_000

/** One MQTT connection carrying the batches of one device (mTLS) or of a user's devices (phone bridge, JWT). */
export class Uplink {
  private client: MqttClient | null = null
  private gen = 0
  /** the current connection attempt reported an error (its cause, counted once in env.errors) */
  private attemptErrored = false
  private connected = false
  private everConnected = false
  private attempt = 0
  /** how many times this link moved on to the next broker of its list */
  private turn = 0
  private reconnectTimer: NodeJS.Timeout | null = null
  private offlineUntil = 0
  /** cut by the tunnel and not connected since: the next CONNACK is this link's recovery */
  private cutPending = false
  private stopping = false
  private readonly inflight = new Set<Batch>()
  private readonly byId = new Map<string, Firmware>()
  private readonly rng: Rng
  readonly clientId: string

  constructor(
    private readonly auth: UplinkAuth,
    readonly firmwares: Firmware[],
    private readonly env: UplinkEnv,
    seed: number,
  ) {
    for (const fw of firmwares) this.byId.set(fw.deviceId, fw)
    this.clientId = auth.kind === 'device' ? (firmwares[0] as Firmware).deviceId : `bridge:${auth.userId}`
    this.rng = new Rng(seed)
  }

  get isConnected(): boolean {
    return this.connected
  }

  /** Nothing left to send or to be acknowledged. */
  get idle(): boolean {
    return this.inflight.size === 0 && this.firmwares.every((f) => !f.hasQueued())
  }

  /**
   * Up, with nothing to send or to be acknowledged. The drain waits for this rather than for `idle`: a link lost
   * (cut, kicked) with an empty buffer is idle too, and stopping it then would cancel its reconnect.
   */
  get settled(): boolean {
    return this.connected && this.idle
  }

  start(): void {
    this.connect()
  }

  private counter(which: 'Attempts' | 'Connects' | 'Failures' | 'Refused' | 'Lost' | 'Reconnects'): void {
    const prefix = this.auth.kind === 'device' ? 'dev' : 'bridge'
    this.env.counters[`${prefix}${which}`]++
  }

  private connect(): void {
    if (this.stopping) return
    this.reconnectTimer = null
    const gen = ++this.gen
    this.attemptErrored = false
    this.counter('Attempts')
    const base: IClientOptions = {
      clientId: this.clientId,
      protocolVersion: 4,
      clean: true,
      keepalive: 60,
      reconnectPeriod: 0,
      connectTimeout: 30_000,
      queueQoSZero: false,
      resubscribe: false,
    }
    let client: MqttClient
    const auth = this.auth
    const url = pick(auth.urls, auth.first, this.turn)
    const port = Number(url.port)
    const host = url.hostname
    if (auth.kind === 'device') {
      const secureContext = auth.secureContext
      const localAddress = this.env.sourceAddress
      client = new MqttClient(
        () => tls.connect({ host, port, secureContext, ...(localAddress ? { localAddress } : {}) }),
        base,
      )
    } else {
      // Phone bridges are few: MQTT.js builds their TCP/WS stream from the URL.
      client = mqtt.connect(url.href, { ...base, username: 'jwt', password: auth.token, ca: this.env.ca })
    }
    this.client = client
    client.on('connect', () => {
      if (gen !== this.gen) return
      this.connected = true
      this.env.counters.connected++
      this.counter('Connects')
      if (this.everConnected) this.counter('Reconnects')
      this.everConnected = true
      if (this.cutPending) {
        this.cutPending = false
        this.env.counters.offlineRecovered++
      }
      this.attempt = 0
      const topics: Record<string, { qos: 0 | 1 }> = {}
      for (const fw of this.firmwares) {
        topics[`devices/${fw.deviceId}/config`] = { qos: 1 }
        topics[`devices/${fw.deviceId}/rejections`] = { qos: 1 }
      }
      client.subscribe(topics, () => undefined)
      this.pump()
    })
    client.on('message', (topic, payload) => {
      const [, id, leaf] = topic.split('/')
      const fw = id === undefined ? undefined : this.byId.get(id)
      if (!fw) return
      if (leaf === 'config') fw.applyConfig(payload)
      else if (leaf === 'rejections') fw.onRejection(payload)
    })
    client.on('error', (err: Error & { code?: number | string }) => {
      if (gen !== this.gen) return
      this.attemptErrored = true
      if (typeof err.code === 'number') this.counter('Refused')
      const key = `${this.auth.kind}:${typeof err.code === 'number' ? `connack ${err.code}` : (err.code ?? err.message.slice(0, 60))}`
      this.env.errors[key] = (this.env.errors[key] ?? 0) + 1
    })
    client.on('close', () => {
      if (gen !== this.gen) return
      this.onClosed()
    })
  }

  private onClosed(): void {
    const wasConnected = this.connected
    this.connected = false
    if (wasConnected) this.env.counters.connected--
    const client = this.client
    this.client = null
    this.gen++
    client?.removeAllListeners('connect')
    client?.on('error', () => undefined)
    client?.end(true)
    // Unacked batches return to the buffer and go again, byte for byte, after the reconnect.
    for (const b of this.inflight) {
      b.fw.unackedSamples -= b.ts.length
      b.fw.giveBack(b)
    }
    this.inflight.clear()
    if (this.stopping) return
    // With several brokers the next attempt goes to the next one: a dead node's devices spread over the others.
    if (this.auth.urls.length > 1) this.turn++
    const now = Date.now()
    if (now < this.offlineUntil) {
      this.reconnectTimer = setTimeout(() => this.connect(), this.offlineUntil - now)
      return
    }
    if (wasConnected) this.counter('Lost')
    else {
      this.counter('Failures')
      // One cause per failed attempt: its error when it had one (reset, CONNACK timeout or code), else a bare close.
      if (!this.attemptErrored) {
        const key = `${this.auth.kind}:closed before CONNACK`
        this.env.errors[key] = (this.env.errors[key] ?? 0) + 1
      }
    }
    // Exponential backoff with "equal jitter": half fixed, half random, so a cut swarm does not come back in step.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt)
    this.attempt = Math.min(this.attempt + 1, 16)
    const delay = ceiling / 2 + this.rng.range(0, ceiling / 2)
    this.reconnectTimer = setTimeout(() => this.connect(), delay)
  }

  /** Publishes queued batches while the in-flight window has room. */
  pump(): void {
    const client = this.client
    if (!client || !this.connected) return
    const window = this.env.qos === 1 ? this.env.inflight : Number.POSITIVE_INFINITY
    let progressed = true
    while (this.inflight.size < window && progressed) {
      progressed = false
      for (const fw of this.firmwares) {
        if (this.inflight.size >= window) break
        const b = fw.take()
        if (!b) continue
        progressed = true
        this.send(client, b)
      }
    }
  }

  private send(client: MqttClient, b: Batch): void {
    const gen = this.gen
    const c = this.env.counters
    const sentAt = performance.now()
    c.publishes++
    if (b.attempts > 0) c.republishes++
    b.attempts++
    b.fw.markPublished(b, Date.now())
    this.inflight.add(b)
    b.fw.unackedSamples += b.ts.length
    client.publish(`devices/${b.fw.deviceId}/readings`, b.payload, { qos: this.env.qos }, (err) => {
      if (gen !== this.gen || !this.inflight.has(b)) return
      if (err) return // the close handler puts it back
      this.inflight.delete(b)
      b.fw.unackedSamples -= b.ts.length
      c.batchesAcked++
      if (this.env.qos === 1) this.env.ackUs.recordValue(Math.max(1, Math.round((performance.now() - sentAt) * 1000)))
      b.fw.delivered(b)
      this.pump()
    })
  }

  /**
   * A tunnel: the link drops without a DISCONNECT and stays down for `forMs`; the device keeps sampling. A link not
   * up (in a handshake or a backoff) is held off too, but what follows may be its first connect, not a reconnect:
   * only cuts of a link that was up count in `offlineCutsWhileUp`.
   */
  cut(forMs: number): void {
    this.offlineUntil = Date.now() + forMs
    this.env.counters.offlineCuts++
    if (this.connected) this.env.counters.offlineCutsWhileUp++
    this.cutPending = true
    if (this.client) this.client.stream.destroy()
    else if (this.reconnectTimer) {
      clearTimeout(this.reconnectTimer)
      this.reconnectTimer = setTimeout(() => this.connect(), forMs)
    }
  }

  get offline(): boolean {
    return Date.now() < this.offlineUntil
  }

  /** Sends a DISCONNECT and closes; unsent batches stay where they are (the caller drained first). */
  async stop(): Promise<void> {
    this.stopping = true
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer)
    this.reconnectTimer = null
    const client = this.client
    if (!client) return
    const wasConnected = this.connected
    this.connected = false
    if (wasConnected) this.env.counters.connected--
    this.gen++
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        client.end(true)
        resolve()
      }, 3000)
      client.end(false, {}, () => {
        clearTimeout(timer)
        resolve()
      })
    })
  }
}

// A worker drives a slice of the swarm: the wearers, their devices and phone bridges, the users' apps (alerts and
// live over WebSocket) and, in worker 0, the event's medic. It reports cumulative counters and interval histograms
// every second and, at the end, the acked readings the parent verifies against the database. Run forked
// (`node dist/simulators/worker.js`, IPC) or in process (tests running the TypeScript sources).
import fs from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import type tls from 'node:tls'
import { pathToFileURL } from 'node:url'
import type { Histogram } from 'hdr-histogram-js'
import mqtt, { type MqttClient } from 'mqtt'
import type { AlertMessage, LiveSnapshot } from '../src/outputs/payloads.js'
import { AppCopy } from './app-copy.js'
import { marathonCourse } from './course.js'
import { deviceTlsContext, Firmware, Tracker, Uplink, type UplinkAuth } from './device.js'
import { EXPECTED_ALERTS, hashSeed, randomProfile, randomRunnerPlan, Rng, Wearer } from './physiology.js'
import {
  type AnomalyOutcome,
  type Counters,
  encodeHistogram,
  forEachLimit,
  type HistogramSet,
  newHistogram,
  type ParentToWorker,
  pick,
  type RecommendationReceipt,
  type RunsWire,
  type UserSpec,
  type WorkerInit,
  type WorkerSelf,
  type WorkerToParent,
  zeroCounters,
} from './protocol.js'

interface SimUser {
  spec: UserSpec
  wearer: Wearer
  firmwares: Firmware[]
  uplink: Uplink
  startAt: number
  active: boolean
  /** the tunnel: not yet, 'late' (its link was not up at the planned time), or done */
  cut: 'no' | 'late' | 'done'
  outcome: AnomalyOutcome | null
}

const DRAIN_POLL_MS = 100
/** how often a connected app syncs during the run, each at its own phase (phones come to the foreground at random
 *  moments: all apps at once every few seconds was a synchronized burst no fleet produces) */
const APP_SYNC_EVERY_MS = 30_000
/** after the last device is drained, apps get this long for alerts still on their way */
const ALERT_GRACE_MS = 2000

export function isAlertMessage(v: unknown): v is AlertMessage {
  if (typeof v !== 'object' || v === null) return false
  const a = v as Partial<AlertMessage>
  return (
    typeof a.kind === 'string' &&
    (a.state === 'opened' || a.state === 'resolved') &&
    typeof a.deviceId === 'string' &&
    typeof a.evidence === 'object' &&
    a.evidence !== null &&
    typeof a.evidence.t === 'number'
  )
}

function isLiveSnapshot(v: unknown): v is LiveSnapshot {
  return typeof v === 'object' && v !== null && typeof (v as Partial<LiveSnapshot>).t === 'number'
}

function parseJson(payload: Buffer): unknown {
  try {
    return JSON.parse(payload.toString('utf8'))
  } catch {
    return undefined
  }
}

export class WorkerDriver {
  private readonly counters: Counters = zeroCounters()
  private readonly alertKinds: Record<string, number> = {}
  private readonly errors: Record<string, number> = {}
  private readonly hist: Record<keyof HistogramSet, Histogram> = {
    ackUs: newHistogram(),
    alertMs: newHistogram(),
    liveLagMs: newHistogram(),
  }
  private readonly users: SimUser[] = []
  private readonly byUser = new Map<string, SimUser>()
  private readonly apps: MqttClient[] = []
  /** each app's local copy, kept by live alerts and delta sync (app-copy.ts) */
  private readonly copies = new Map<string, { copy: AppCopy; client: MqttClient }>()
  private syncTimer: NodeJS.Timeout | null = null
  private readonly appDrops: NodeJS.Timeout[] = []
  private readonly recommendations: RecommendationReceipt[] = []
  private medic: MqttClient | null = null
  private readonly ca: Buffer
  private startAt = 0
  private endAt = Number.POSITIVE_INFINITY
  private stopRequested = false
  private closingApps = false
  private loop: NodeJS.Timeout | null = null
  private statsTimer: NodeJS.Timeout | null = null
  private readonly loopDelay = monitorEventLoopDelay({ resolution: 20 })
  private readonly cpuAtStart = process.cpuUsage()

  constructor(
    private readonly init: WorkerInit,
    private readonly emit: (m: WorkerToParent) => void,
  ) {
    this.ca = fs.readFileSync(init.target.caPath)
  }

  /** per direct user: its device's TLS context, built before the start (deviceTlsContext) */
  private readonly tlsContexts = new Map<string, tls.SecureContext>()

  /** Loads the devices' TLS material and connects the apps and the medic, so they are listening when devices start. */
  async prepare(): Promise<void> {
    const { users, medic } = this.init
    let n = 0
    for (const u of users) {
      const first = u.devices[0]
      if (u.via !== 'direct' || !first) continue
      this.tlsContexts.set(u.userId, deviceTlsContext(this.ca, first.keyPath, first.certPath))
      // yield now and then: the parent's IPC and the apps' sockets keep moving
      if (++n % 256 === 0) await new Promise((r) => setImmediate(r))
    }
    await forEachLimit(
      users.filter((u) => u.app),
      64,
      (u) => this.connectApp(u),
    )
    if (medic) await this.connectMedic(medic.userId, medic.token)
    this.emit({ type: 'ready', workerIndex: this.init.workerIndex })
  }

  private sourceAddress(i: number): string | undefined {
    const list = this.init.options.sourceAddresses
    return list.length > 0 ? list[i % list.length] : undefined
  }

  private wsOptions(token: string, i: number) {
    const localAddress = this.sourceAddress(i)
    return {
      headers: { Authorization: `Bearer ${token}` },
      ...(localAddress ? { localAddress } : {}),
      ...(this.init.target.ws.some((u) => u.startsWith('wss:')) ? { ca: this.ca } : {}),
    }
  }

  /**
   * WebSocket clients (apps, the medic) start on listener `start` of the list and take the next one at each
   * reconnect, so an app whose node died comes back on another.
   */
  private wsFailover(start: number) {
    const list = this.init.target.ws
    let turn = 0
    return {
      url: pick(list, start),
      transformWsUrl: list.length > 1 ? () => pick(list, start, turn++) : undefined,
    }
  }

  private connectApp(u: UserSpec): Promise<void> {
    const app = u.app
    if (!app) return Promise.resolve()
    const c = this.counters
    c.appAttempts++
    const ws = this.wsFailover(u.index)
    const client = mqtt.connect(ws.url, {
      ...(ws.transformWsUrl ? { transformWsUrl: ws.transformWsUrl } : {}),
      clientId: `app:${u.userId}`,
      protocolVersion: 4,
      clean: true,
      reconnectPeriod: 2000,
      connectTimeout: 20_000,
      wsOptions: this.wsOptions(app.token, u.index),
    })
    this.apps.push(client)
    const copy = new AppCopy(u.userId, () => client)
    this.copies.set(u.userId, { copy, client })
    let first = true
    let up = false
    client.on('close', () => {
      if (up && !this.closingApps) c.appLost++
      up = false
    })
    client.on('message', (topic, payload) => this.onAppMessage(u, topic, payload))
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        if (!first) return
        first = false
        c.appFailures++
        resolve()
      }, 20_000)
      client.on('error', (err: Error & { code?: number | string }) => {
        if (typeof err.code !== 'number') return
        c.appRefused++
        this.errors[`app:connack ${err.code}`] = (this.errors[`app:connack ${err.code}`] ?? 0) + 1
      })
      client.on('connect', () => {
        up = true
        const topics: Record<string, { qos: 0 | 1 }> = {
          [`users/${u.userId}/alerts`]: { qos: 1 },
          [`users/${u.userId}/live`]: { qos: 0 },
          [copy.responseTopic]: { qos: 1 },
        }
        if (this.init.options.recommendations) topics[`users/${u.userId}/recommendations`] = { qos: 1 }
        if (app.leaderboard && this.init.options.eventId)
          topics[`events/${this.init.options.eventId}/leaderboard`] = { qos: 0 }
        client.subscribe(topics, () => {
          // (Re)connected: catch up from the cursor held (what was missed while away comes with it).
          if (!this.closingApps) void copy.sync()
          if (!first) return
          first = false
          clearTimeout(timer)
          c.appConnects++
          resolve()
        })
      })
    })
  }

  private connectMedic(userId: string, token: string): Promise<void> {
    const eventId = this.init.options.eventId
    if (!eventId) return Promise.resolve()
    const ws = this.wsFailover(0)
    const client = mqtt.connect(ws.url, {
      ...(ws.transformWsUrl ? { transformWsUrl: ws.transformWsUrl } : {}),
      clientId: `medic:${userId}`,
      protocolVersion: 4,
      reconnectPeriod: 2000,
      connectTimeout: 20_000,
      wsOptions: this.wsOptions(token, 0),
    })
    this.medic = client
    client.on('error', (err: Error & { code?: number | string }) => {
      if (typeof err.code === 'number')
        this.errors[`medic:connack ${err.code}`] = (this.errors[`medic:connack ${err.code}`] ?? 0) + 1
    })
    client.on('message', (topic) => {
      if (topic === `events/${eventId}/alerts`) this.counters.medicAlerts++
    })
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.counters.medicFailures++
        resolve()
      }, 20_000)
      client.once('connect', () => {
        client.subscribe({ [`events/${eventId}/alerts`]: { qos: 1 } }, () => {
          clearTimeout(timer)
          this.counters.medicConnects++
          resolve()
        })
      })
    })
  }

  private onAppMessage(u: UserSpec, topic: string, payload: Buffer): void {
    const now = Date.now()
    const leaf = topic.slice(topic.lastIndexOf('/') + 1)
    const c = this.counters
    if (topic.startsWith('events/')) {
      c.leaderboardReceived++
      return
    }
    if (leaf === 'live') {
      c.liveReceived++
      const snap = parseJson(payload)
      // A retained snapshot from before this run says nothing about this run's lag.
      if (isLiveSnapshot(snap) && this.startAt > 0 && snap.t >= this.startAt && now >= snap.t)
        this.hist.liveLagMs.recordValue(Math.max(1, now - snap.t))
      return
    }
    if (topic.endsWith('/sync/response')) {
      this.copies.get(u.userId)?.copy.onResponse(payload)
      return
    }
    if (leaf === 'recommendations') {
      const r = parseJson(payload) as { id?: unknown; rule?: unknown; createdAt?: unknown } | undefined
      if (r && typeof r.id === 'string' && typeof r.rule === 'string' && typeof r.createdAt === 'string')
        this.recommendations.push({
          userId: u.userId,
          id: r.id,
          rule: r.rule,
          createdAt: Date.parse(r.createdAt),
          receivedAt: now,
        })
      return
    }
    if (leaf !== 'alerts') return
    const alert = parseJson(payload)
    if (!isAlertMessage(alert)) return
    this.copies.get(u.userId)?.copy.live(alert)
    if (alert.state === 'resolved') {
      c.alertsResolved++
      return
    }
    c.alertsOpened++
    this.alertKinds[alert.kind] = (this.alertKinds[alert.kind] ?? 0) + 1
    const sim = this.byUser.get(u.userId)
    const outcome = sim?.outcome
    if (!sim || !outcome || alert.evidence.t < outcome.atMs || !EXPECTED_ALERTS[outcome.kind].includes(alert.kind)) {
      c.alertsUnexpected++
      return
    }
    if (outcome.alerts.length === 0) {
      c.alertsMatched++
      const fw = sim.firmwares.find((f) => f.deviceId === alert.deviceId)
      const published = fw?.publishedAt(alert.evidence.t) ?? null
      if (published !== null && now >= published) this.hist.alertMs.recordValue(Math.max(1, now - published))
    }
    outcome.alerts.push(alert.kind)
  }

  /** Builds the wearers and devices; they power on at their ramp slot after `atMs`. */
  start(atMs: number): void {
    const o = this.init.options
    this.startAt = atMs
    this.endAt = atMs + o.durationS * 1000
    const course = o.scenario === 'marathon' ? marathonCourse() : null
    let conn = 0
    for (const spec of this.init.users) {
      const rng = new Rng(spec.seed)
      const profile = randomProfile(rng)
      const userStart = atMs + spec.startS * 1000
      const runner =
        o.scenario === 'marathon'
          ? randomRunnerPlan(rng, profile, o.raceStartMs, { fromMs: userStart, toMs: this.endAt }, spec.dropOut ? 1 : 0)
          : null
      const anomaly = spec.anomaly
        ? { kind: spec.anomaly.kind, atMs: atMs + spec.anomaly.atS * 1000, brady: spec.anomaly.brady }
        : null
      const wearer = new Wearer(profile, o.scenario, spec.seed, userStart, runner, anomaly, course?.lengthM ?? 0)
      const firmwares: Firmware[] = []
      let user: SimUser | null = null
      spec.devices.forEach((d, i) => {
        const tracker = new Tracker(
          wearer,
          d.kind,
          i === 0,
          d.kind === 'watch' ? course : null,
          hashSeed(spec.seed, d.deviceId),
        )
        const fw = new Firmware(
          d.deviceId,
          tracker,
          { format: o.format, intervalMs: o.intervalMs, batchEvery: o.batchEvery, bufferSamples: o.bufferSamples },
          this.counters,
          // Devices of one user sample a little apart, as real ones do.
          userStart + Math.floor(rng.range(0, o.intervalMs)),
          anomaly !== null,
          () => user?.uplink.pump(),
        )
        fw.sampling = false
        firmwares.push(fw)
      })
      const first = spec.devices[0]
      if (!first) continue
      const auth: UplinkAuth =
        spec.via === 'direct'
          ? {
              kind: 'device',
              urls: this.init.target.mqtts.map((u) => new URL(u)),
              first: spec.index,
              secureContext:
                this.tlsContexts.get(spec.userId) ?? deviceTlsContext(this.ca, first.keyPath, first.certPath),
            }
          : {
              kind: 'bridge',
              urls: (this.init.target.mqtt ?? this.init.target.ws).map((u) => new URL(u)),
              first: spec.index,
              userId: spec.userId,
              token: spec.bridgeToken ?? '',
            }
      const uplink = new Uplink(
        auth,
        firmwares,
        {
          counters: this.counters,
          ackUs: this.hist.ackUs,
          qos: o.qos,
          inflight: o.inflight,
          ca: this.ca,
          sourceAddress: this.sourceAddress(conn++),
          errors: this.errors,
        },
        hashSeed(spec.seed, 'uplink'),
      )
      const outcome: AnomalyOutcome | null = anomaly
        ? { userId: spec.userId, kind: anomaly.kind, atMs: anomaly.atMs, alerts: [], watched: spec.app !== null }
        : null
      user = { spec, wearer, firmwares, uplink, startAt: userStart, active: false, cut: 'no', outcome }
      this.users.push(user)
      this.byUser.set(spec.userId, user)
    }
    this.scheduleAppDrops(atMs)
    // Apps sync now and then while the run goes on, as a phone coming to the foreground does.
    const due = new Map<string, number>()
    const t0 = Date.now()
    for (const id of this.copies.keys()) due.set(id, t0 + Math.random() * APP_SYNC_EVERY_MS)
    this.syncTimer = setInterval(() => {
      const now = Date.now()
      for (const [id, { copy, client }] of this.copies) {
        if ((due.get(id) ?? 0) > now) continue
        due.set(id, now + APP_SYNC_EVERY_MS)
        if (client.connected) void copy.sync()
      }
    }, 1000)
    this.loopDelay.enable()
    this.loop = setInterval(() => this.tick(), 100)
    this.statsTimer = setInterval(() => this.sendStats(), o.statsIntervalMs)
  }

  /** --app-reconnects: each app loses its link that many times during the run (mqtt.js reconnects it). */
  private scheduleAppDrops(atMs: number): void {
    const n = this.init.options.appReconnects
    if (n <= 0) return
    for (const [userId, { client }] of this.copies) {
      const rng = new Rng(hashSeed(this.init.options.seed, `app-drops:${userId}`))
      for (let i = 0; i < n; i++) {
        const at = atMs + rng.range(0.1, 0.9) * this.init.options.durationS * 1000
        this.appDrops.push(
          setTimeout(
            () => {
              if (!client.connected || this.closingApps) return
              this.counters.appDrops++
              client.stream.destroy()
            },
            Math.max(0, at - Date.now()),
          ),
        )
      }
    }
  }

  private tick(): void {
    const now = Date.now()
    const o = this.init.options
    const until = Math.min(now, this.endAt - 1)
    const cutAt = o.offline ? this.startAt + o.offline.atS * 1000 : Number.POSITIVE_INFINITY
    for (const u of this.users) {
      if (!u.active) {
        if (now < u.startAt || now >= this.endAt) continue
        u.active = true
        if (o.sampleBeforeLink) for (const fw of u.firmwares) fw.sampling = true
        u.uplink.start()
      }
      // With sampleBeforeLink off, a device starts sampling once its user's link is first up.
      if (u.uplink.isConnected) for (const fw of u.firmwares) if (!fw.sampling) fw.startSamplingAt(now)
      if (u.spec.offline && u.cut !== 'done' && o.offline && now >= cutAt) {
        // The tunnel drops live links: one still in its first handshake then (a slow ramp on a busy machine) is
        // dropped once it is up, with its backlog in flight, so every cut is of a link that was up and must reconnect.
        if (u.uplink.isConnected) {
          if (u.cut === 'late') this.counters.offlineCutsLate++
          u.cut = 'done'
          u.uplink.cut(o.offline.forS * 1000)
        } else u.cut = 'late'
      }
      const offline = u.uplink.offline
      for (const fw of u.firmwares) {
        const taken = fw.tick(until)
        if (offline) this.counters.bufferedWhileOffline += taken
      }
    }
    if (now >= this.endAt) void this.finish()
  }

  requestStop(): void {
    if (this.stopRequested) return
    this.stopRequested = true
    this.endAt = Math.min(this.endAt, Date.now())
  }

  private finishing: Promise<void> | null = null

  private finish(): Promise<void> {
    this.finishing ??= (async () => {
      if (this.loop) clearInterval(this.loop)
      this.loop = null
      // Stop sampling, seal the partial batches, and let every device upload what it holds.
      for (const u of this.users) {
        for (const fw of u.firmwares) {
          fw.sampling = false
          fw.seal()
        }
        u.uplink.pump()
      }
      // Done when every link is up with nothing in flight or queued, and has stayed so for the alert grace: a link
      // lost meanwhile (cut, kicked by the broker) reconnects first, whether or not it still holds anything, so every
      // loss before the stop ends in a reconnect in the report. The deadline only bounds a broker that never lets a
      // device back in (then the report shows it: samples still buffered, links not up).
      const grace = this.init.options.eventId || this.apps.length > 0 ? ALERT_GRACE_MS : 0
      const deadline = Date.now() + this.init.options.drainS * 1000
      let settledSince: number | null = null
      for (;;) {
        const now = Date.now()
        if (this.users.every((u) => !u.active || u.uplink.settled)) settledSince ??= now
        else settledSince = null
        if (now >= deadline) break
        // With a known alert engine the wait for alerts is a condition, not the grace alone: on a loaded machine the
        // output engine may lag the last PUBACK by more than any fixed time.
        if (settledSince !== null && now - settledSince >= grace && (!this.init.options.awaitAlerts || this.alertsIn()))
          break
        await new Promise((r) => setTimeout(r, DRAIN_POLL_MS))
      }
      // Synchronously after the last check: no link can drop between it and the stop.
      await Promise.all(this.users.map((u) => (u.active ? u.uplink.stop() : Promise.resolve())))
      // Every acked reading is committed now: each app catches up once more (reconnecting first if it must).
      for (const t of this.appDrops) clearTimeout(t)
      if (this.syncTimer) clearInterval(this.syncTimer)
      await forEachLimit([...this.copies.values()], 32, async ({ copy, client }) => {
        const until = Date.now() + this.init.options.drainS * 1000
        copy.complete = false
        while (Date.now() < until) {
          if (client.connected && (await copy.sync())) return
          await new Promise((r) => setTimeout(r, DRAIN_POLL_MS))
        }
      })
      this.closingApps = true
      await Promise.all(
        [...this.apps, ...(this.medic ? [this.medic] : [])].map((c) => c.endAsync(false).catch(() => undefined)),
      )
      if (this.statsTimer) clearInterval(this.statsTimer)
      this.statsTimer = null
      this.emit(this.finalMessage())
    })()
    return this.finishing
  }

  /** Every watched anomaly of this worker has its alert, and the medic (worker 0) at least as many copies. */
  private alertsIn(): boolean {
    let alerted = 0
    for (const u of this.users) {
      const o = u.outcome
      if (!o?.watched) continue
      if (o.alerts.length === 0) return false
      alerted++
    }
    return !this.medic || this.counters.medicAlerts >= alerted
  }

  private gauges(): void {
    let buffered = 0
    for (const u of this.users) for (const fw of u.firmwares) buffered += fw.bufferedSamples
    this.counters.samplesBuffered = buffered
    this.counters.bufferedPeak = Math.max(this.counters.bufferedPeak, buffered)
  }

  private takeInterval(): HistogramSet {
    const out: HistogramSet = {
      ackUs: encodeHistogram(this.hist.ackUs),
      alertMs: encodeHistogram(this.hist.alertMs),
      liveLagMs: encodeHistogram(this.hist.liveLagMs),
    }
    for (const h of Object.values(this.hist)) h.reset()
    return out
  }

  private sendStats(): void {
    this.gauges()
    this.emit({
      type: 'stats',
      workerIndex: this.init.workerIndex,
      at: Date.now(),
      counters: { ...this.counters },
      alertKinds: { ...this.alertKinds },
      interval: this.takeInterval(),
    })
  }

  private selfStats(): WorkerSelf {
    this.loopDelay.disable()
    const ms = (ns: number) => Math.round(ns / 1e5) / 10
    const cpu = process.cpuUsage(this.cpuAtStart)
    return {
      loopLagP50Ms: ms(this.loopDelay.percentile(50)),
      loopLagP99Ms: ms(this.loopDelay.percentile(99)),
      loopLagMaxMs: ms(this.loopDelay.max),
      // In process (tests) these are the whole process's, broker included.
      cpuUserS: Math.round(cpu.user / 1e4) / 100,
      cpuSystemS: Math.round(cpu.system / 1e4) / 100,
      rssMb: Math.round(process.memoryUsage.rss() / 1048576),
    }
  }

  private finalMessage(): WorkerToParent {
    this.gauges()
    const runs: RunsWire[] = []
    let tMin = Number.POSITIVE_INFINITY
    let tMax = 0
    for (const u of this.users) {
      for (const fw of u.firmwares) {
        tMin = Math.min(tMin, fw.tMin)
        tMax = Math.max(tMax, fw.tMax)
        for (const rejected of [false, true]) {
          const set = rejected ? fw.readings.rejected : fw.readings.acked
          for (const [metric, r] of Object.entries(set)) {
            if (r)
              runs.push({ deviceId: fw.deviceId, metric: Number(metric), rejected, t0: r.t0, step: r.step, n: r.n })
          }
        }
      }
    }
    return {
      type: 'final',
      workerIndex: this.init.workerIndex,
      counters: { ...this.counters },
      alertKinds: { ...this.alertKinds },
      interval: this.takeInterval(),
      runs,
      anomalies: this.users.flatMap((u) => (u.outcome ? [u.outcome] : [])),
      appCopies: [...this.copies.values()].map(({ copy }) => copy.wire()),
      recommendations: [...this.recommendations],
      tMin,
      tMax,
      errors: { ...this.errors },
      self: this.selfStats(),
    }
  }

  /** Cuts the links of the given users (tests: a tunnel on demand). */
  cutUsers(userIds: readonly string[], forMs: number): void {
    for (const id of userIds) this.byUser.get(id)?.uplink.cut(forMs)
  }
}

// Forked: the parent sends init, then start (or stop); this process reports over IPC and exits after the final.
const invokedAs = process.argv[1] ? pathToFileURL(process.argv[1]).href : ''
if (process.send && invokedAs === import.meta.url) {
  let driver: WorkerDriver | null = null
  let workerIndex = -1
  const send = (m: WorkerToParent) => {
    process.send?.(m, undefined, {}, (err: Error | null) => {
      if (err) process.exitCode = 1
      if (m.type === 'final' || m.type === 'error') process.disconnect?.()
    })
  }
  // The terminal's Ctrl-C reaches the whole process group; the parent decides how to stop.
  process.on('SIGINT', () => undefined)
  process.on('uncaughtException', (err) => {
    send({ type: 'error', workerIndex, message: err.stack ?? err.message })
  })
  process.on('message', (m: ParentToWorker) => {
    if (m.type === 'init') {
      workerIndex = m.init.workerIndex
      driver = new WorkerDriver(m.init, send)
      driver
        .prepare()
        .catch((err: Error) => send({ type: 'error', workerIndex: m.init.workerIndex, message: err.message }))
    } else if (m.type === 'start') driver?.start(m.atMs)
    else if (m.type === 'stop') driver?.requestStop()
  })
  process.on('disconnect', () => {
    // The parent is gone (or we sent the final): nothing left to report to.
    setTimeout(() => process.exit(process.exitCode ?? 0), 100).unref()
  })
}

// The control plane: changes to who may connect and what may be published about a person reach every running broker
// within milliseconds, whoever wrote them: this broker, another one on the same database, the CLI against
// PULSEGATE_DATABASE_URL. Migration 0013 raises a notification on `pulsegate_control` at the commit of every such
// write; each broker LISTENs on a dedicated session (notify.ts) and here
//   - drops the affected cache entries (certificate verdicts, device ownership, participation, public events),
//   - re-checks the connected devices concerned against the registry and cuts those no longer allowed (revoked,
//     re-registered with another certificate, erased),
//   - re-reads consent changed elsewhere, so the outputs' consent gate, the leaderboard visibility and the retained
//     users/{uid}/consent/state follow as they do for a change through this broker,
//   - runs its live part of an erasure another process wrote (refuse, cut, drain, clear: erase-live.ts).
// After a lost LISTEN session it flushes everything and re-checks every connected device, since notifications sent
// meanwhile are gone. With the embedded store (one process owns the database, the CLI goes through /admin/rpc) there
// is no other writer: the in-process paths do all of this and no listener is started.
import type { Client } from 'aedes'
import { Counter, Gauge, type Registry } from 'prom-client'
import { z } from 'zod'
import type { Principals } from '../hooks/types.js'
import type { Logger } from '../log.js'
import type { Purpose } from '../ops/consent-model.js'
import { PURPOSES } from '../ops/consent-model.js'
import type { ConsentStateMessage } from '../ops/consent-model.js'
import type { ErasedDevice, LiveEraser } from '../ops/erase.js'
import type { CertificateRecord } from '../store/registry.js'
import { topicFor } from '../topics/grammar.js'
import { connInfo } from '../transport/connection.js'
import { PgListener } from './notify.js'

export const CONTROL_CHANNEL = 'pulsegate_control'
export const CONTROL_APPLICATION_NAME = 'pulsegate-control'

const str = z.string().min(1).max(200)
const op = z.enum(['INSERT', 'UPDATE', 'DELETE']).optional()
const messageSchema = z.discriminatedUnion('k', [
  z.object({ k: z.literal('device'), op, d: str.nullable(), u: str.nullish(), key: z.number().int().nullish() }),
  z.object({ k: z.literal('user'), u: str }),
  z.object({
    k: z.literal('consent'),
    u: str,
    p: z.enum(PURPOSES),
    v: z.number().int().nullable(),
    e: str.nullish(),
  }),
  z.object({ k: z.literal('participant'), op, e: str, u: str }),
  z.object({ k: z.literal('event'), e: str }),
  z.object({ k: z.literal('ping'), n: str }),
])
export type ControlMessage = z.infer<typeof messageSchema>

export interface ControlPlaneDeps {
  /** the server's URL; null: the embedded store, in-process paths only */
  url: string | null
  enabled: boolean
  reconnectMaxMs: number
  lookups: {
    forgetDevice(deviceId: string): void
    forgetParticipant(eventId: string, userId: string): void
    forgetEvent(eventId: string): void
    flush(): void
    certificates: { lookup(deviceId: string, fingerprint: string): Promise<CertificateRecord | null> }
  }
  consent: {
    refresh(hints: { userId: string; purpose?: Purpose; version?: number }[]): Promise<Map<string, ConsentStateMessage>>
    cachedUsers(): string[]
  }
  publish(topic: string, payload: string, qos: 0 | 1, retain: boolean): void
  /** connected clients by id (Aedes' map) */
  clients(): Record<string, Client | undefined>
  principals: Principals
  /** this broker's live part of an erasure */
  live: LiveEraser
  /** sends a notification through the pool (the self-test of the listener) */
  notify(payload: string): Promise<void>
  metrics: Registry
  log: Logger
}

function counter(reg: Registry, name: string, help: string, labelNames: string[] = []): Counter {
  return (reg.getSingleMetric(name) as Counter | undefined) ?? new Counter({ name, help, labelNames, registers: [reg] })
}

/** An erasure's rows arrive as several notifications (devices, participants, then the user): kept this long. */
const PENDING_MS = 60_000
/** A broker's own erasure also notifies it: skipped while it runs and this long after. */
const LOCAL_MS = 60_000
/** How long the self-test waits for its own notification before it warns that none arrive. */
const SELF_TEST_MS = 10_000

export class ControlPlane {
  private listener: PgListener | null = null
  private queue: ControlMessage[] = []
  private scheduled = false
  private chain: Promise<void> = Promise.resolve()
  /** user → what earlier notifications said about them (an erasure's devices and events) */
  private readonly pending = new Map<string, { at: number; devices: ErasedDevice[]; events: Set<string> }>()
  private readonly local = new Map<string, number>()
  private readonly pings = new Map<string, () => void>()
  private readonly notifications: Counter
  private readonly flushes: Counter
  private readonly reconnects: Counter
  private readonly cuts: Counter
  private readonly listening: Gauge

  constructor(private readonly deps: ControlPlaneDeps) {
    const reg = deps.metrics
    this.notifications = counter(reg, 'pulsegate_control_notifications_total', 'control-plane notifications', ['kind'])
    this.flushes = counter(reg, 'pulsegate_control_cache_flushes_total', 'full cache flushes', ['reason'])
    this.reconnects = counter(reg, 'pulsegate_control_listener_reconnects_total', 'LISTEN sessions re-established')
    this.cuts = counter(reg, 'pulsegate_control_sessions_cut_total', 'sessions cut by the control plane', ['reason'])
    this.listening =
      (reg.getSingleMetric('pulsegate_control_listening') as Gauge | undefined) ??
      new Gauge({
        name: 'pulsegate_control_listening',
        help: '1 while the LISTEN session is up (0 with the embedded store: in-process paths)',
        registers: [reg],
      })
  }

  /** 'notify': listening on the server; 'in-process': embedded store (or disabled), no other writer to hear. */
  get mode(): 'notify' | 'in-process' {
    return this.listener ? 'notify' : 'in-process'
  }

  /** the LISTEN session's backend pid (tests terminate it) */
  get listenerPid(): number | null {
    return this.listener?.pid ?? null
  }

  /** Starts listening; resolves once LISTEN is in force (or after startWaitMs: it keeps trying in the background). */
  async start(startWaitMs = 5000): Promise<void> {
    const { url, enabled, log } = this.deps
    if (!url || !enabled) {
      log.info('control plane: in-process (no other process writes this store)')
      return
    }
    this.listener = new PgListener({
      url,
      channel: CONTROL_CHANNEL,
      applicationName: CONTROL_APPLICATION_NAME,
      log,
      maxBackoffMs: this.deps.reconnectMaxMs,
      onNotification: (payload) => this.receive(payload),
      onListening: (resumed) => {
        this.listening.set(1)
        if (resumed) {
          this.reconnects.inc()
          this.enqueueFlush('reconnect')
        }
        void this.selfTest()
      },
      onLost: () => this.listening.set(0),
      onUnsupported: (err) => {
        this.listener = null
        log.error(
          { err: err.message },
          'control plane: the database refuses LISTEN: in-process paths only; changes written by other processes reach this broker when its caches expire',
        )
      },
    })
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      this.listener.start(),
      new Promise<void>((r) => {
        timer = setTimeout(r, startWaitMs)
        timer.unref()
      }),
    ])
    clearTimeout(timer)
  }

  async stop(): Promise<void> {
    await this.listener?.stop()
    this.listening.set(0)
    await this.chain
  }

  /** Runs this broker's own erasure of a user: its notifications are then not acted on twice. */
  async localErasure<T>(userId: string, run: () => Promise<T>): Promise<T> {
    this.local.set(userId, Number.POSITIVE_INFINITY)
    try {
      return await run()
    } finally {
      this.local.set(userId, Date.now() + LOCAL_MS)
    }
  }

  /** Devices (re-)registered through this broker: their verdicts go and their open sessions are checked again, also
   * with the embedded store, where no notification comes. */
  devicesChanged(deviceIds: readonly string[]): Promise<void> {
    for (const d of deviceIds) this.deps.lookups.forgetDevice(d)
    const run = this.chain.then(() => this.recheckDevices(deviceIds))
    this.chain = run.catch((err: Error) => this.deps.log.error({ err: err.message }, 'control plane: re-check failed'))
    return this.chain
  }

  /** Everything cached goes and every connected device is checked again (notifications may have been missed). */
  flush(reason: string): Promise<void> {
    return this.enqueueFlush(reason)
  }

  private enqueueFlush(reason: string): Promise<void> {
    const run = this.chain.then(() => this.doFlush(reason))
    this.chain = run.catch((err: Error) => this.deps.log.error({ err: err.message }, 'control plane: flush failed'))
    return this.chain
  }

  private receive(payload: string): void {
    let msg: ControlMessage
    try {
      msg = messageSchema.parse(JSON.parse(payload))
    } catch {
      this.notifications.inc({ kind: 'invalid' })
      this.deps.log.warn('control plane: unreadable notification ignored')
      return
    }
    this.notifications.inc({ kind: msg.k })
    if (msg.k === 'ping') {
      this.pings.get(msg.n)?.()
      return
    }
    this.queue.push(msg)
    // Notifications of one transaction arrive together: handled as one batch (one registry query for the devices).
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(() => {
      this.scheduled = false
      const batch = this.queue
      this.queue = []
      this.chain = this.chain
        .then(() => this.apply(batch))
        .catch((err: Error) => this.deps.log.error({ err: err.message }, 'control plane: applying changes failed'))
    })
  }

  private pendingOf(userId: string) {
    let p = this.pending.get(userId)
    if (!p) {
      p = { at: Date.now(), devices: [], events: new Set() }
      this.pending.set(userId, p)
    }
    return p
  }

  private async apply(batch: readonly ControlMessage[]): Promise<void> {
    const now = Date.now()
    for (const [u, p] of this.pending) if (p.at < now - PENDING_MS) this.pending.delete(u)
    for (const [u, until] of this.local) if (until < now) this.local.delete(u)
    const devices = new Set<string>()
    const hints: { userId: string; purpose: Purpose; version: number }[] = []
    const erased: string[] = []
    for (const m of batch) {
      switch (m.k) {
        case 'device':
          if (!m.d) break
          devices.add(m.d)
          this.deps.lookups.forgetDevice(m.d)
          if (m.op === 'DELETE' && m.u && typeof m.key === 'number')
            this.pendingOf(m.u).devices.push({ deviceId: m.d, deviceKey: m.key, fingerprint: null })
          break
        case 'participant':
          this.deps.lookups.forgetParticipant(m.e, m.u)
          if (m.op === 'DELETE') this.pendingOf(m.u).events.add(m.e)
          break
        case 'event':
          this.deps.lookups.forgetEvent(m.e)
          break
        case 'consent':
          // Event-scoped opt-ins live on the participant row, which notifies on its own.
          if (!m.e && m.v !== null) hints.push({ userId: m.u, purpose: m.p, version: m.v })
          break
        case 'user':
          erased.push(m.u)
          break
        default:
          break
      }
    }
    await this.recheckDevices([...devices])
    if (hints.length > 0) this.publishStates(await this.deps.consent.refresh(hints))
    for (const u of erased) {
      const p = this.pending.get(u)
      this.pending.delete(u)
      if (this.local.has(u)) continue
      // Not on the chain: draining waits for the writer, and later revocations must not queue behind it.
      void this.eraseHere(u, p?.devices ?? [], [...(p?.events ?? [])])
    }
  }

  private publishStates(states: Map<string, ConsentStateMessage>): void {
    for (const [u, msg] of states) this.deps.publish(topicFor.consentState(u), JSON.stringify(msg), 1, true)
  }

  /** Connected devices among `ids` whose certificate the registry no longer accepts are disconnected. */
  private async recheckDevices(ids: readonly string[]): Promise<void> {
    const clients = this.deps.clients()
    await Promise.all(
      ids.map(async (id) => {
        const c = clients[id]
        if (!c || this.deps.principals.get(c)?.role !== 'device') return
        const fp = connInfo(c.conn)?.peerCert?.fingerprint256
        let rec: CertificateRecord | null = null
        if (fp) {
          try {
            rec = await this.deps.lookups.certificates.lookup(id, fp)
          } catch (err) {
            // The database is unreachable: the listener is likely down too, and its reconnect re-checks everyone.
            this.deps.log.warn({ deviceId: id, err: (err as Error).message }, 'control plane: device re-check failed')
            return
          }
        }
        if (rec && !rec.revoked && !rec.fingerprintRevoked && rec.fingerprint === fp) return
        this.cuts.inc({ reason: 'certificate' })
        this.deps.log.info({ deviceId: id }, 'control plane: device no longer allowed, session cut')
        c.close()
      }),
    )
  }

  private async eraseHere(userId: string, known: ErasedDevice[], eventIds: string[]): Promise<void> {
    const { live, log } = this.deps
    // Devices of the person still connected here count too (their rows may have been deleted before we heard).
    const devices = [...known]
    for (const c of Object.values(this.deps.clients())) {
      const p = c ? this.deps.principals.get(c) : undefined
      if (c && p?.role === 'device' && p.userId === userId && p.deviceId && p.deviceKey !== null)
        if (!devices.some((d) => d.deviceKey === p.deviceKey))
          devices.push({ deviceId: p.deviceId, deviceKey: p.deviceKey, fingerprint: null })
    }
    try {
      live.refuse(userId, devices)
      const cut = live.cut(userId, devices)
      if (cut > 0) this.cuts.inc({ reason: 'erasure' }, cut)
      await live.drain(userId, devices)
      await live.removeFromBoards(userId, eventIds)
      await live.clear(userId, devices, eventIds)
      log.info({ userId, sessionsCut: cut }, 'control plane: erasure written elsewhere applied here')
    } catch (err) {
      log.error({ userId, err: (err as Error).message }, 'control plane: applying an erasure failed')
    } finally {
      live.end(userId, devices)
    }
  }

  private async doFlush(reason: string): Promise<void> {
    this.flushes.inc({ reason })
    this.deps.lookups.flush()
    const clients = this.deps.clients()
    const devices = Object.keys(clients).filter((id) => {
      const c = clients[id]
      return c !== undefined && this.deps.principals.get(c)?.role === 'device'
    })
    await this.recheckDevices(devices)
    const users = this.deps.consent.cachedUsers()
    if (users.length > 0) this.publishStates(await this.deps.consent.refresh(users.map((userId) => ({ userId }))))
    this.deps.log.info({ reason, devices: devices.length, users: users.length }, 'control plane: caches flushed')
  }

  /** Sends itself a notification through the pool: a proxy that swallows them (PgBouncer transaction pooling,
   * pglite-socket) is reported instead of silently leaving the caches to their TTLs. */
  private async selfTest(): Promise<void> {
    const n = Math.random().toString(36).slice(2)
    let timer: NodeJS.Timeout | undefined
    const heard = new Promise<boolean>((resolve) => {
      this.pings.set(n, () => resolve(true))
      timer = setTimeout(() => resolve(false), SELF_TEST_MS)
      timer.unref()
    })
    try {
      await this.deps.notify(JSON.stringify({ k: 'ping', n }))
      if (!(await heard)) {
        this.listening.set(0)
        this.deps.log.error(
          'control plane: LISTEN is accepted but notifications do not arrive (a pooling proxy?): changes written by other processes reach this broker only when its caches expire (10 s certificates, 30 s ownership)',
        )
      }
    } catch (err) {
      this.deps.log.warn({ err: (err as Error).message }, 'control plane: self-test failed')
    } finally {
      clearTimeout(timer)
      this.pings.delete(n)
    }
  }
}

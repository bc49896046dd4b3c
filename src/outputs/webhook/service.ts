// Push for offline apps: the alerts (and recommendations) the broker publishes on users/{uid}/…, for users with no app
// connected, POSTed to the operator's push service (which forwards them to FCM/APNs). Docs: docs/outputs.md "Webhooks".
//
// Off the ingest path: observe() runs inside the broker's publish (after the commit that raised the alert), does a
// few map look-ups and starts an INSERT it does not wait for. The row is written before the first attempt, so a
// restart loses nothing pending; the worker sends at most `concurrency` at once, retries with exponential backoff
// and jitter, and dead-letters after maxAttempts (or at once on a 4xx that a retry would not change). At least once:
// a timeout can hide a delivery that arrived, so receivers dedupe by X-Pulsegate-Delivery.
import crypto from 'node:crypto'
import type { Aedes, Client } from 'aedes'
import type { Registry } from 'prom-client'
import type { BrokerConfig } from '../../../broker.config.js'
import type { Principal } from '../../identity/principal.js'
import type { Logger } from '../../log.js'
import type { Queryable } from '../../store/db.js'
import type { ConsentGate } from '../consent-gate.js'
import { PURPOSE_OF, pushTopic, toPushable } from './body.js'
import { createWebhookMetrics, type WebhookMetrics } from './metrics.js'
import { AppPresence } from './presence.js'
import { type Attempt, WebhookSender } from './sender.js'
import { type StoredDelivery, WebhookStore } from './store.js'

export type WebhookSettings = BrokerConfig['webhook'] & { url: string; secret: string }

export interface WebhookDeps {
  db: Queryable
  consent: Pick<ConsentGate, 'load' | 'allows'>
  registry: Registry
  log: Logger
  node: string
  /** one broker process owns the table (no cluster): at start it takes over every pending row at once */
  exclusive: boolean
}

interface Held extends StoredDelivery {
  sending: boolean
}

/** How often delivered rows past their dedupe week are deleted (the first sweep does it too). */
const PRUNE_EVERY_MS = 3600_000

/** Exponential backoff with "equal jitter": half the step fixed, half random, so retries of a burst spread out. */
export function backoffMs(attempt: number, baseMs: number, maxMs: number, random = Math.random): number {
  const step = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1))
  return Math.round(step / 2 + random() * (step / 2))
}

export class WebhookService {
  readonly presence = new AppPresence()
  readonly metrics: WebhookMetrics
  private readonly store: WebhookStore
  private readonly sender: WebhookSender
  private readonly held = new Map<string, Held>()
  /** due now, oldest first (and the same ids as a set, for the retry timer's scan) */
  private readonly due: string[] = []
  private readonly dueIds = new Set<string>()
  private inFlight = new Set<Promise<void>>()
  private inserting = 0
  private retryTimer: NodeJS.Timeout | null = null
  private retryAt = Number.POSITIVE_INFINITY
  private sweepTimer: NodeJS.Timeout | null = null
  private sweeping: Promise<void> | null = null
  private stopped = false
  private started = false
  private prunedAt = 0
  private readonly createdAt = Date.now()

  constructor(
    private readonly s: WebhookSettings,
    private readonly deps: WebhookDeps,
  ) {
    this.metrics = createWebhookMetrics(deps.registry)
    this.store = new WebhookStore(deps.db, deps.node, s.claimMs)
    this.sender = new WebhookSender(s)
  }

  attach(aedes: Aedes, principals: WeakMap<Client, Principal>): void {
    this.presence.attach(aedes, principals)
  }

  /** Called with every message the broker publishes itself; synchronous and cheap (it never waits for anything). */
  observe(topic: string, payload: string | Buffer): void {
    if (this.stopped) return
    const target = pushTopic(topic)
    if (!target || (target.kind === 'recommendation' && !this.s.recommendations)) return
    const { userId, kind } = target
    const count = (outcome: string) => this.metrics.deliveries.inc({ kind, outcome })
    if (this.presence.connected(userId)) {
      count('skipped_app_connected')
      return
    }
    // Consent of a user with an output is loaded (the outputs and insights load it first); not loaded = not granted.
    if (!this.deps.consent.allows(userId, PURPOSE_OF[kind])) {
      count('withheld_consent')
      return
    }
    let push: ReturnType<typeof toPushable>
    try {
      push = toPushable(kind, userId, payload)
    } catch (err) {
      this.deps.log.warn({ topic, err: (err as Error).message }, 'webhook: output message not understood')
      count('bad_payload')
      return
    }
    // Memory bound: rows beyond maxQueued wait in the table for the sweep; with maxQueued INSERTs unanswered (the
    // database far behind), the push is dropped and counted.
    if (this.inserting >= this.s.maxQueued) {
      count('dropped_queue_full')
      return
    }
    const hold = this.held.size + this.inserting < this.s.maxQueued
    const id = crypto.randomUUID()
    const createdAt = Date.now()
    const body = push.body(id)
    this.inserting++
    void this.store
      .insert({ id, dedupeKey: push.dedupeKey, userId, kind, body, createdAt }, hold)
      .then((inserted) => {
        if (!inserted) {
          count('duplicate')
          return
        }
        // The sweep may have taken it up already (its renew released the row before this ran): one holder only.
        if (!hold || this.stopped || this.held.has(id)) return
        this.held.set(id, { id, userId, kind, body, attempts: 0, nextAttemptAt: createdAt, createdAt, sending: false })
        this.enqueue(id)
        this.pump()
      })
      .catch((err: Error) => {
        count('dropped_error')
        this.deps.log.error({ err: err.message, kind }, 'webhook: delivery could not be stored; not sent')
      })
      .finally(() => {
        this.inserting--
        this.metrics.queueDepth.set(this.held.size)
      })
  }

  start(): void {
    if (this.started) return
    this.started = true
    this.sweepSoon(true)
    this.sweepTimer = setInterval(() => this.sweepSoon(false), this.s.sweepMs)
    this.sweepTimer.unref()
  }

  /** Erasure: the user's deliveries held here are dropped (the erasure deletes their rows). */
  forget(userId: string): void {
    for (const [id, d] of this.held) if (d.userId === userId && !d.sending) this.held.delete(id)
    this.metrics.queueDepth.set(this.held.size)
  }

  /** Stops sending, waits for the attempts in flight (each bounded by timeoutMs) and hands pending rows back. */
  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    if (this.sweepTimer) clearInterval(this.sweepTimer)
    if (this.retryTimer) clearTimeout(this.retryTimer)
    await this.sweeping
    await Promise.all(this.inFlight)
    this.sender.close()
    await this.store.release().catch((err: Error) => {
      this.deps.log.warn({ err: err.message }, 'webhook: claims not released (they lapse after claimMs)')
    })
  }

  private sweepSoon(first: boolean): void {
    if (this.sweeping || this.stopped) return
    this.sweeping = this.sweep(first)
      .catch((err: Error) => this.deps.log.warn({ err: err.message }, 'webhook: sweep failed'))
      .finally(() => {
        this.sweeping = null
      })
  }

  /** Renews this node's claims, takes up rows nobody holds while there is room, prunes, counts the dead letters. */
  private async sweep(first: boolean): Promise<void> {
    await this.store.renew([...this.held.keys()])
    // A single broker's first sweep takes over what the process before it left, but nothing this one created.
    const leftBefore = first && this.deps.exclusive ? this.createdAt : null
    const rows = await this.store.claim(this.s.maxQueued - this.held.size, leftBefore)
    for (const r of rows) {
      if (this.held.has(r.id) || this.stopped) continue
      this.held.set(r.id, { ...r, sending: false })
      this.schedule(r.id, r.nextAttemptAt)
    }
    if (Date.now() - this.prunedAt >= PRUNE_EVERY_MS) {
      this.prunedAt = Date.now()
      await this.store.prune()
    }
    this.metrics.deadLetters.set(await this.store.countDead())
    this.metrics.queueDepth.set(this.held.size)
    this.pump()
  }

  private schedule(id: string, at: number): void {
    if (at <= Date.now()) {
      this.enqueue(id)
      return
    }
    if (at < this.retryAt) {
      if (this.retryTimer) clearTimeout(this.retryTimer)
      this.retryAt = at
      this.retryTimer = setTimeout(() => this.wake(), at - Date.now())
      this.retryTimer.unref()
    }
  }

  private enqueue(id: string): void {
    if (this.dueIds.has(id)) return
    this.dueIds.add(id)
    this.due.push(id)
  }

  /** The retry timer: rows whose time has come join the due queue; the timer is set for the next one. */
  private wake(): void {
    this.retryTimer = null
    this.retryAt = Number.POSITIVE_INFINITY
    for (const d of this.held.values()) {
      if (d.sending || this.dueIds.has(d.id)) continue
      this.schedule(d.id, d.nextAttemptAt)
    }
    this.pump()
  }

  private pump(): void {
    while (!this.stopped && this.inFlight.size < this.s.concurrency) {
      const id = this.due.shift()
      if (id === undefined) return
      this.dueIds.delete(id)
      const d = this.held.get(id)
      if (!d || d.sending) continue
      d.sending = true
      const p: Promise<void> = this.attempt(d)
        .catch((err: Error) => this.deps.log.error({ err: err.message }, 'webhook: attempt failed unexpectedly'))
        .finally(() => {
          this.inFlight.delete(p)
          d.sending = false
          this.pump()
        })
      this.inFlight.add(p)
    }
  }

  private async attempt(d: Held): Promise<void> {
    const count = (outcome: string) => this.metrics.deliveries.inc({ kind: d.kind, outcome })
    // Asked again at each attempt: a withdrawal stops the pushes still pending from the next attempt on.
    let allowed: boolean
    try {
      await this.deps.consent.load([d.userId])
      allowed = this.deps.consent.allows(d.userId, PURPOSE_OF[d.kind])
    } catch (err) {
      return this.failed(d, { result: 'network', status: null, error: (err as Error).message, permanent: false }, true)
    }
    if (!allowed) return this.drop(d, 'withheld_consent')
    // The app came back while this waited for a retry: it has the alert over MQTT (its session) or delta sync.
    // In cluster mode an app on another node counts too (asked of Redis here, off the publish path).
    if (await this.presence.connectedAnywhere(d.userId)) return this.drop(d, 'skipped_app_connected')
    const a = await this.sender.send(d.id, d.body)
    this.metrics.attempts.inc({ result: a.result })
    if (a.result !== 'ok') return this.failed(d, a, false)
    count('delivered')
    this.metrics.latency.observe((Date.now() - d.createdAt) / 1000)
    // The row is marked before this node lets go of it: a sweep in between would find it pending and unheld, and
    // send it again.
    await this.store.delivered(d.id).catch((err: Error) => {
      // Sent, but still pending in the table: sent again later (at least once; receivers dedupe).
      this.deps.log.warn({ err: err.message }, 'webhook: delivered row not marked')
    })
    this.held.delete(d.id)
    this.metrics.queueDepth.set(this.held.size)
  }

  /** Not to be sent after all: the row goes (before the node lets go of it, as for a delivery). */
  private async drop(d: Held, outcome: 'withheld_consent' | 'skipped_app_connected'): Promise<void> {
    await this.store.remove(d.id).catch((err: Error) => {
      this.deps.log.warn({ err: err.message }, 'webhook: withheld row not removed')
    })
    this.held.delete(d.id)
    this.metrics.deliveries.inc({ kind: d.kind, outcome })
    this.metrics.queueDepth.set(this.held.size)
  }

  /** A failed attempt: retried later, or dead-lettered past the bound (a database hiccup does not count as one). */
  private async failed(d: Held, a: Attempt, ours: boolean): Promise<void> {
    const attempts = ours ? d.attempts : d.attempts + 1
    const error = a.error ?? a.result
    const dead = !ours && (a.permanent || attempts >= this.s.maxAttempts)
    try {
      if (dead) {
        await this.store.dead(d.id, attempts, error)
        this.held.delete(d.id)
        this.metrics.deliveries.inc({ kind: d.kind, outcome: 'dead_lettered' })
        this.metrics.deadLetters.inc()
        this.deps.log.warn({ delivery: d.id, kind: d.kind, attempts, error }, 'webhook: dead-lettered')
      } else {
        const at = Date.now() + backoffMs(Math.max(1, attempts), this.s.backoffBaseMs, this.s.backoffMaxMs)
        await this.store.retryAt(d.id, attempts, at, error)
        d.attempts = attempts
        d.nextAttemptAt = at
        if (!ours) this.metrics.deliveries.inc({ kind: d.kind, outcome: 'retried' })
        this.schedule(d.id, at)
      }
    } catch (err) {
      // The database is away: keep the row in memory and try again after a backoff step.
      d.nextAttemptAt = Date.now() + this.s.backoffBaseMs
      this.schedule(d.id, d.nextAttemptAt)
      this.deps.log.warn({ err: (err as Error).message }, 'webhook: attempt outcome not stored')
    }
    this.metrics.queueDepth.set(this.held.size)
  }
}

/** The webhook output when a URL is configured, else null. */
export function openWebhooks(config: BrokerConfig, deps: Omit<WebhookDeps, 'node'>): WebhookService | null {
  const { url, secret } = config.webhook
  if (!url || !secret) return null
  const log = deps.log.child({ stage: 'webhook' })
  return new WebhookService({ ...config.webhook, url, secret }, { ...deps, log, node: config.node.name })
}

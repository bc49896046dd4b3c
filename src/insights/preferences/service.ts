// Preferences synced across a user's devices. An app publishes per-field edits stamped with its HLC on
// users/{uid}/preferences; they are merged into the database (a CRDT map, crdt.ts) before the PUBACK, and the merged
// state goes out retained on users/{uid}/preferences/state with every field's clock, so devices can merge it too.
// The same merged state, cached in memory, is what the recommendation engine reads (PreferencesReader).
import type { Aedes } from 'aedes'
import type { Logger } from '../../log.js'
import { topicFor } from '../../topics/grammar.js'
import { applyEntry, type Entry, join, type PrefsMap, project, stateMessage, ZONE_PREFIX } from './crdt.js'
import type { PreferencesMetrics } from './metrics.js'
import type { Preferences, PreferencesReader } from './reader.js'
import type { PreferencesStore } from './store.js'
import { MAX_PRIVACY_ZONES, type ParsedMessage, parsePreferencesMessage } from './wire.js'

/** The broker's own publishes; resolves once the message is stored (retained) and routed. */
export interface StatePublisher {
  publish(topic: string, payload: string, retain: boolean): Promise<void>
}

/** Publishes through the broker (QoS 1), resolving when Aedes' publish callback runs: after the retained store. */
export function aedesPublisher(broker: () => Aedes | null): StatePublisher {
  return {
    publish: (topic, payload, retain) =>
      new Promise<void>((resolve, reject) => {
        const b = broker()
        if (!b) return reject(new Error('broker not started'))
        const packet = {
          cmd: 'publish' as const,
          topic,
          payload: Buffer.from(payload),
          qos: 1 as const,
          retain,
          dup: false,
        }
        b.publish(packet, (err) => (err ? reject(err) : resolve()))
      }),
  }
}

export interface PreferencesOptions {
  /** an edit stamped further than this ahead of the server's clock is refused */
  maxClockAheadMs: number
  now?: () => number
}

export type HandleOutcome =
  | { outcome: 'merged'; applied: string[]; stale: number }
  | { outcome: 'refused'; reason: 'bad_payload' | 'clock_ahead'; detail: string }

/** What a refused message gets back on the state topic, not retained (MQTT 3.1.1 has no negative PUBACK). */
export interface PreferencesRefusal {
  userId: string
  error: 'bad_payload' | 'clock_ahead'
  detail: string
  /** the sending node, when the message named one */
  node: string | null
  serverTime: number
}

const EMPTY: PrefsMap = new Map()

export class PreferencesService implements PreferencesReader {
  /** Per user: the join of everything read from the database or merged here. Only grows (until erase). */
  private readonly cache = new Map<string, Map<string, Entry>>()
  /** Per user: the state message last published retained by this process. */
  private readonly published = new Map<string, string>()
  /** Per user: the tail of the work in flight, so one user's merges and publishes run one after another. */
  private readonly queues = new Map<string, Promise<unknown>>()
  /** Per user: how many times erased, so a load that raced an erasure can tell. */
  private readonly erasures = new Map<string, number>()
  private readonly now: () => number
  /** told after a user's cached state changed (merged, loaded or erased): derived caches (privacy zones) recompute */
  private readonly listeners = new Set<(userId: string) => void>()

  constructor(
    private readonly store: PreferencesStore,
    private readonly publisher: StatePublisher,
    private readonly opts: PreferencesOptions,
    private readonly metrics: PreferencesMetrics,
    private readonly log: Logger,
  ) {
    this.now = opts.now ?? Date.now
  }

  get(userId: string): Preferences {
    return project(this.cache.get(userId) ?? EMPTY)
  }

  /** Calls `listener(userId)` after each change of a user's cached state; returns an unsubscribe. */
  onChange(listener: (userId: string) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Brings the cache up to date with the database for these users (edits merged by other broker processes too). */
  async load(userIds: readonly string[]): Promise<void> {
    const epochs = new Map(userIds.map((u) => [u, this.erasures.get(u) ?? 0]))
    const stored = await this.store.read(userIds)
    // A user erased while the rows were being read must not come back into the cache from that read.
    for (const [userId, map] of stored)
      if (epochs.get(userId) === (this.erasures.get(userId) ?? 0)) this.absorb(userId, map)
  }

  /**
   * A message on users/{uid}/preferences from one of that user's apps. Resolves once its edits are stored and the
   * merged state is published, or once a bad message is refused (then it is logged, counted and answered with a
   * PreferencesRefusal, and the caller acks it: nothing was stored, and a resend would be refused again). Rejects
   * only when the database did not take the merge: no PUBACK then, the app resends, and a second merge is harmless.
   */
  handle(userId: string, payload: Buffer): Promise<HandleOutcome> {
    return this.serially(userId, () => this.merge(userId, payload))
  }

  /**
   * Before a subscription to users/{uid}/preferences/state is granted: make sure this process has published the
   * user's state retained (after a restart the retained store is empty), so the subscriber gets it as retained.
   */
  ensureRetained(userId: string): Promise<void> {
    if (this.published.has(userId)) return Promise.resolve()
    return this.serially(userId, async () => {
      if (this.published.has(userId)) return
      await this.load([userId])
      await this.publishState(userId)
    })
  }

  /** Erasure (privacy operations): the rows, the cache and the retained state. */
  async erase(userId: string): Promise<void> {
    await this.serially(userId, async () => {
      await this.store.erase(userId)
      this.erasures.set(userId, (this.erasures.get(userId) ?? 0) + 1)
      this.cache.delete(userId)
      this.published.delete(userId)
      this.changed(userId)
      await this.publisher.publish(topicFor.preferencesState(userId), '', true) // an empty retained payload clears it
    })
  }

  private async merge(userId: string, payload: Buffer): Promise<HandleOutcome> {
    const now = this.now()
    let parsed = parsePreferencesMessage(payload, now, this.opts.maxClockAheadMs)
    if (parsed.ok) parsed = this.checkZoneCount(userId, parsed)
    if (!parsed.ok) {
      this.metrics.refused.inc({ reason: parsed.reason })
      this.log.info({ userId, node: parsed.node, reason: parsed.reason, detail: parsed.detail }, 'preferences refused')
      const refusal: PreferencesRefusal = {
        userId,
        error: parsed.reason,
        detail: parsed.detail,
        node: parsed.node ?? null,
        serverTime: now,
      }
      await this.publish(userId, JSON.stringify(refusal), false)
      return { outcome: 'refused', reason: parsed.reason, detail: parsed.detail }
    }
    // Two edits of one field in one message: the greater wins here already (one upsert row per field).
    const batch = new Map<string, Entry>()
    for (const { field, entry } of parsed.entries) applyEntry(batch, field, entry)
    let applied: string[]
    let stored: Map<string, Map<string, Entry>>
    try {
      applied = await this.store.merge(userId, batch)
      // Read back the whole state: other broker processes may have merged edits of this user meanwhile.
      stored = await this.store.read([userId])
    } catch (err) {
      this.metrics.storeErrors.inc()
      this.log.warn({ userId, err: (err as Error).message }, 'preferences merge failed')
      throw err
    }
    const stale = batch.size - applied.length
    if (applied.length > 0) this.metrics.edits.inc({ outcome: 'applied' }, applied.length)
    if (stale > 0) this.metrics.edits.inc({ outcome: 'stale' }, stale)
    this.absorb(userId, stored.get(userId) ?? batch)
    await this.publishState(userId)
    return { outcome: 'merged', applied, stale }
  }

  /**
   * Every published position is checked against each of the user's zones: their number is bounded (counted on the
   * cached state, so a state this process has not loaded yet may pass a little over; removals always pass).
   */
  private checkZoneCount(userId: string, parsed: ParsedMessage & { ok: true }): ParsedMessage {
    if (!parsed.entries.some((e) => e.field.startsWith(ZONE_PREFIX) && e.entry.value !== null)) return parsed
    const zones = new Map<string, Entry>()
    for (const [field, e] of this.cache.get(userId) ?? EMPTY) if (field.startsWith(ZONE_PREFIX)) zones.set(field, e)
    for (const { field, entry } of parsed.entries) if (field.startsWith(ZONE_PREFIX)) applyEntry(zones, field, entry)
    const count = [...zones.values()].filter((e) => e.value !== null).length
    if (count <= MAX_PRIVACY_ZONES) return parsed
    return {
      ok: false,
      reason: 'bad_payload',
      detail: `at most ${MAX_PRIVACY_ZONES} privacy zones per user (this would make ${count})`,
      node: parsed.node,
    }
  }

  private absorb(userId: string, map: PrefsMap): void {
    this.cache.set(userId, join(this.cache.get(userId) ?? EMPTY, map))
    this.changed(userId)
  }

  private changed(userId: string): void {
    for (const l of this.listeners) l(userId)
  }

  /** Publishes the cached state retained, unless this process last published exactly that. */
  private async publishState(userId: string): Promise<void> {
    const body = JSON.stringify(stateMessage(userId, this.cache.get(userId) ?? EMPTY))
    if (this.published.get(userId) === body) return
    this.published.set(userId, body)
    if (!(await this.publish(userId, body, true))) this.published.delete(userId)
  }

  private async publish(userId: string, body: string, retain: boolean): Promise<boolean> {
    try {
      await this.publisher.publish(topicFor.preferencesState(userId), body, retain)
      return true
    } catch (err) {
      // The merge is stored; the state goes out with the next edit or subscription.
      this.log.warn({ userId, err: (err as Error).message }, 'preferences state publish failed')
      return false
    }
  }

  private serially<T>(userId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.queues.get(userId) ?? Promise.resolve()
    const run = prev.then(fn, fn)
    const tail = run.then(
      () => undefined,
      () => undefined,
    )
    this.queues.set(userId, tail)
    void tail.then(() => {
      if (this.queues.get(userId) === tail) this.queues.delete(userId)
    })
    return run
  }
}

// A broker's part of an erasure (src/ops/erase.ts): refuse, cut, drain, then clear what lives outside the database:
// leaderboard entries, retained messages, stored sessions and their queued messages, in-memory state and caches.
//
// Stored sessions are those of Aedes' in-memory persistence (aedes-persistence 11, the one this broker configures):
// a client with clean: false keeps its subscriptions and a queue of QoS 1 messages while it is away. indexSessions()
// keeps the ids of such clients, so the person's are found by client id (their namespace `<role>:<uid>[:…]` and their
// devices' ids) whatever they subscribed to. Messages about the person queued for someone else (an admin's wildcard,
// a medic's event alerts) are removed one by one: the persistence removes a queued packet by message id only, so each
// such packet first gets an id no other packet in that queue has.
import type { Readable } from 'node:stream'
import type { Aedes, Client } from 'aedes'
import type { Principals } from '../hooks/types.js'
import { TOKEN_ROLES } from '../identity/principal.js'
import type { Logger } from '../log.js'
import type { Db } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import type { AuditActor, AuditSink } from './audit-types.js'
import {
  type ErasedDevice,
  type ErasureReport,
  type ErasureStage,
  eraseUser,
  type LiveCounts,
  type LiveEraser,
} from './erase.js'
import type { ErasureGuard } from './erasure-guard.js'

export interface QueuedPacket {
  topic: string
  payload: Buffer | string
  messageId?: number
}

/** The parts of the Aedes persistence an erasure uses (aedes-persistence's MemoryPersistence has all of them). */
export interface SessionPersistence {
  addSubscriptions(client: { id: string }, subs: unknown[]): Promise<void>
  cleanSubscriptions(client: { id: string }): Promise<void>
  subscriptionsByTopic(topic: string): Promise<{ clientId: string }[]>
  outgoingStream(client: { id: string }): Readable
  outgoingClearMessageId(client: { id: string }, packet: { messageId?: number }): Promise<unknown>
  delWill(client: { id: string }): Promise<unknown>
  cleanIncoming?(client: { id: string }): Promise<void>
  createRetainedStreamCombi(patterns: string[]): Readable
  /** removes the queued packets `match` picks, where the persistence hands out copies (Redis: src/cluster/) */
  removeQueued?(client: { id: string }, match: (pkt: QueuedPacket) => boolean): Promise<number>
}

/** Client ids of stored sessions, kept by wrapping the persistence (call before any client connects). */
export interface SessionIndex {
  ids(): string[]
}

export function indexSessions(persistence: SessionPersistence): SessionIndex {
  const stored = new Set<string>()
  const add = persistence.addSubscriptions.bind(persistence)
  const clean = persistence.cleanSubscriptions.bind(persistence)
  persistence.addSubscriptions = async (client, subs) => {
    await add(client, subs)
    stored.add(client.id)
  }
  persistence.cleanSubscriptions = async (client) => {
    await clean(client)
    stored.delete(client.id)
  }
  return { ids: () => [...stored] }
}

/** A connected client as the erasure sees it. */
export interface ConnectedClient {
  id: string
  userId: string | null
  close(): void
}

export interface LiveErasureDeps {
  guard: ErasureGuard
  lookups: { forgetDevice(deviceId: string): void }
  writer: { flushBarrier(): Promise<void> }
  ingest: { settled(): Promise<void>; forget(devices: readonly ErasedDevice[]): void }
  outputs: {
    forget(userId: string): Promise<void>
    removeFromBoards(userId: string, eventIds: readonly string[]): Promise<number>
  }
  connected(): Iterable<ConnectedClient>
  persistence: SessionPersistence
  sessions: SessionIndex
  /** publishes an empty retained message (clears the topic) */
  clearRetained(topic: string): Promise<void>
  /** other holders of the person's data in memory, told after the deletion (the consent cache, …) */
  forget: readonly ((userId: string) => void | Promise<void>)[]
}

const USER_LEAVES = [
  'alerts',
  'live',
  'recommendations',
  'sync/request',
  'sync/response',
  'consent',
  'consent/state',
  'preferences',
  'preferences/state',
] as const
const DEVICE_LEAVES = ['readings', 'status', 'rejections', 'config'] as const

function userTopics(userId: string): string[] {
  return USER_LEAVES.map((leaf) => `users/${userId}/${leaf}`)
}
function deviceTopics(devices: readonly ErasedDevice[]): string[] {
  return devices.flatMap((d) => DEVICE_LEAVES.map((leaf) => `devices/${d.deviceId}/${leaf}`))
}
function eventTopics(eventIds: readonly string[]): string[] {
  return eventIds.flatMap((e) => [topicFor.eventAlerts(e), topicFor.leaderboard(e), topicFor.stats(e)])
}

/** The person's client ids: their devices' ids, and `<role>:<uid>` optionally followed by `:…` (principal.ts). */
export function ownsClientId(userId: string, deviceIds: ReadonlySet<string>, clientId: string): boolean {
  if (deviceIds.has(clientId)) return true
  const [role, sub] = clientId.split(':')
  return sub === userId && (TOKEN_ROLES as readonly string[]).includes(role ?? '')
}

/** An event's message that names the person (an alert about them, a board with them on it). */
function mentions(payload: Buffer | string, userId: string): boolean {
  try {
    const msg = JSON.parse(payload.toString()) as { userId?: unknown; top?: { userId?: unknown }[] }
    return msg.userId === userId || (Array.isArray(msg.top) && msg.top.some((e) => e?.userId === userId))
  } catch {
    return false
  }
}

async function collect<T>(stream: Readable): Promise<T[]> {
  const out: T[] = []
  for await (const x of stream) out.push(x as T)
  return out
}

/** Removes the queued packets `match` picks from a stored session's queue; returns how many. */
async function removeQueued(
  p: SessionPersistence,
  clientId: string,
  match: (pkt: QueuedPacket) => boolean,
): Promise<number> {
  const client = { id: clientId }
  if (p.removeQueued) return p.removeQueued(client, match)
  const queued = await collect<QueuedPacket>(p.outgoingStream(client))
  const picked = queued.filter(match)
  if (picked.length === 0) return 0
  const used = new Set(queued.map((q) => q.messageId))
  let next = 1
  for (const pkt of picked) {
    while (used.has(next)) next++
    // The persistence yields its own packet objects: give this one an id no other queued packet has, then remove it.
    pkt.messageId = next
    used.add(next)
    await p.outgoingClearMessageId(client, { messageId: next })
  }
  // Counted from the queue itself, so a persistence that handed out copies cannot report removals that did not happen.
  return Math.max(0, queued.length - (await collect(p.outgoingStream(client))).length)
}

export function createLiveEraser(deps: LiveErasureDeps): LiveEraser {
  return {
    refuse(userId, devices) {
      deps.guard.begin(userId, devices)
      for (const d of devices) deps.lookups.forgetDevice(d.deviceId)
    },

    cut(userId, devices) {
      const ids = new Set(devices.map((d) => d.deviceId))
      let n = 0
      for (const c of deps.connected()) {
        if (c.userId !== userId && !ids.has(c.id)) continue
        c.close()
        n++
      }
      return n
    },

    async drain(userId, devices) {
      // Rows queued before the refusal commit (or fail) first; their listeners hand them to the outputs, whose work
      // for the user (an alert insert) is awaited by forget().
      await deps.writer.flushBarrier()
      await deps.ingest.settled()
      await deps.outputs.forget(userId)
      deps.ingest.forget(devices)
    },

    removeFromBoards: (userId, eventIds) => deps.outputs.removeFromBoards(userId, eventIds),

    async clear(userId, devices, eventIds): Promise<LiveCounts> {
      const p = deps.persistence
      const deviceIds = new Set(devices.map((d) => d.deviceId))
      for (const d of deviceIds) deps.lookups.forgetDevice(d)
      const own = userTopics(userId).concat(deviceTopics(devices))
      let retainedCleared = 0
      for (const topic of own) {
        if ((await collect(p.createRetainedStreamCombi([topic]))).length === 0) continue
        await deps.clearRetained(topic)
        retainedCleared++
      }
      let persistentSessions = 0
      let queuedMessages = 0
      const theirs = deps.sessions.ids().filter((id) => ownsClientId(userId, deviceIds, id))
      for (const id of theirs) {
        queuedMessages += await removeQueued(p, id, () => true)
        await p.cleanSubscriptions({ id })
        await p.delWill({ id })
        await p.cleanIncoming?.({ id })
        persistentSessions++
      }
      // Others' stored sessions subscribed to something that carries the person's data.
      const ownSet = new Set(own)
      const events = new Set(eventTopics(eventIds))
      const others = new Set<string>()
      for (const topic of [...own, ...events]) {
        for (const s of await p.subscriptionsByTopic(topic)) if (!theirs.includes(s.clientId)) others.add(s.clientId)
      }
      for (const id of others) {
        queuedMessages += await removeQueued(
          p,
          id,
          (pkt) => ownSet.has(pkt.topic) || (events.has(pkt.topic) && mentions(pkt.payload, userId)),
        )
      }
      for (const f of deps.forget) await f(userId)
      return { sessionsCut: 0, persistentSessions, queuedMessages, retainedCleared }
    },

    end(userId, devices) {
      deps.guard.end(userId, devices)
    },
  }
}

export interface BrokerErasureDeps extends Omit<LiveErasureDeps, 'connected' | 'clearRetained'> {
  db: Db
  aedes: Aedes
  principals: Principals
  audit: AuditSink
  log: Logger
}

export type EraseLive = (
  userId: string,
  opts?: { actor?: AuditActor; onStage?: (stage: ErasureStage) => void | Promise<void> },
) => Promise<ErasureReport>

/** The broker's live side over Aedes; also run by the control plane for an erasure another process wrote. */
export function brokerLiveEraser(deps: Omit<BrokerErasureDeps, 'db' | 'audit' | 'log'>): LiveEraser {
  const { aedes, principals } = deps
  // Aedes keeps connected clients by id at runtime; its types leave the map out.
  const clients = () => Object.values((aedes as unknown as { clients: Record<string, Client | undefined> }).clients)
  return createLiveEraser({
    ...deps,
    *connected() {
      for (const c of clients())
        if (c) yield { id: c.id, userId: principals.get(c)?.userId ?? null, close: () => c.close() }
    },
    clearRetained: (topic) =>
      new Promise<void>((resolve, reject) =>
        aedes.publish({ cmd: 'publish', topic, payload: Buffer.alloc(0), qos: 0, retain: true, dup: false }, (err) =>
          err ? reject(err) : resolve(),
        ),
      ),
  })
}

/** The broker's erasure: live, and one at a time per user (a second request waits, then finds nothing). */
export function createBrokerErasure(deps: BrokerErasureDeps): EraseLive {
  const live = brokerLiveEraser(deps)
  const running = new Map<string, Promise<unknown>>()
  return (userId, opts = {}) => {
    const run = (running.get(userId) ?? Promise.resolve())
      .catch(() => {})
      .then(() =>
        eraseUser(deps.db, userId, {
          audit: deps.audit,
          actor: opts.actor ?? { role: 'system', id: null },
          live,
          ...(opts.onStage ? { onStage: opts.onStage } : {}),
          log: deps.log,
        }),
      )
    running.set(userId, run)
    const done = () => {
      if (running.get(userId) === run) running.delete(userId)
    }
    run.then(done, done)
    return run
  }
}

// Per-client inbound rate limits: a message bucket and a byte bucket per connection, sized by the client's role.
// Over the limit a QoS 1/2 PUBLISH is held, not refused: its authorizePublish callback waits for tokens, and Aedes
// reads the next chunk of a socket only once every packet of the current one is done, so the socket is not read
// meanwhile and TCP backpressure slows the publisher (no message is lost, its PUBACKs come at the bucket's rate).
// QoS 0 over the limit is dropped and counted. A client whose over-limit traffic stays far above its rate for a whole
// window is disconnected.
import type { Client, PublishPacket } from 'aedes'
import type { BrokerConfig } from '../../broker.config.js'
import type { Role } from '../identity/principal.js'
import type { Logger } from '../log.js'
import { TokenBucket } from './bucket.js'
import type { LimitMetrics } from './metrics.js'

type Done = (err?: Error | null) => void
type Hook = (client: Client | null, packet: PublishPacket, done: Done) => void

interface Held {
  packet: PublishPacket
  done: Done
  bytes: number
}

interface ClientState {
  role: Role
  messages: TokenBucket
  bytes: TokenBucket
  held: Held[]
  timer: NodeJS.Timeout | null
  /** over-limit publishes in the current abuse window, which started at windowStart */
  over: number
  windowStart: number
}

export interface PublishLimiterDeps {
  rates: BrokerConfig['limits']['rates']
  abuse: BrokerConfig['limits']['abuse']
  roleOf(client: Client): Role | undefined
  /** a dropped QoS 0 packet must not be routed on by Aedes either */
  drop(packet: PublishPacket): void
  metrics: LimitMetrics
  log: Logger
  now?: () => number
}

/** bytes a PUBLISH costs: payload and topic (the rest of the header is a few bytes) */
function cost(packet: PublishPacket): number {
  const p = packet.payload as Buffer | string | undefined
  const payload = p === undefined ? 0 : typeof p === 'string' ? Buffer.byteLength(p) : p.length
  return payload + Buffer.byteLength(packet.topic)
}

export class PublishLimiter {
  private readonly states = new WeakMap<Client, ClientState>()
  private readonly now: () => number
  private heldTotal = 0

  constructor(private readonly deps: PublishLimiterDeps) {
    this.now = deps.now ?? Date.now
  }

  /** wraps authorizePublish: the inner hook runs once the packet has its tokens */
  wrap(inner: Hook): Hook {
    return (client, packet, done) => {
      // A will is authorized while its client closes: the last word of a dead device is never throttled or dropped.
      const st = client && !client.closed ? this.stateOf(client) : undefined
      if (!client || !st) {
        inner(client, packet, done)
        return
      }
      const bytes = cost(packet)
      const now = this.now()
      const blocked = st.held.length > 0 ? 'queue' : this.blockedBy(st, bytes, now)
      if (blocked === null) {
        st.messages.take(1, now)
        st.bytes.take(bytes, now)
        inner(client, packet, done)
        return
      }
      const bucket = blocked === 'queue' ? (st.messages.waitMs(1, now) > 0 ? 'messages' : 'bytes') : blocked
      if (this.noteOver(client, st, now)) return
      if (packet.qos === 0) {
        this.deps.metrics.dropped.inc({ role: st.role, bucket })
        this.deps.drop(packet)
        done()
        return
      }
      this.deps.metrics.throttled.inc({ role: st.role, bucket })
      st.held.push({ packet, done, bytes })
      this.heldTotal++
      this.deps.metrics.throttleQueue.set(this.heldTotal)
      this.schedule(client, st, inner)
    }
  }

  /** clientDisconnect: held packets are forgotten with the connection (the client resends unacked QoS 1) */
  forget(client: Client): void {
    const st = this.states.get(client)
    if (!st) return
    if (st.timer) clearTimeout(st.timer)
    st.timer = null
    this.heldTotal -= st.held.length
    st.held = []
    this.deps.metrics.throttleQueue.set(this.heldTotal)
    this.states.delete(client)
  }

  private stateOf(client: Client): ClientState | undefined {
    let st = this.states.get(client)
    if (st) return st
    const role = this.deps.roleOf(client)
    if (!role) return undefined
    const r = this.deps.rates[role]
    if (r.messagesPerSec <= 0 && r.bytesPerSec <= 0) return undefined
    const now = this.now()
    st = {
      role,
      messages: new TokenBucket(r.messagesPerSec, r.messageBurst, now),
      bytes: new TokenBucket(r.bytesPerSec, r.byteBurst, now),
      held: [],
      timer: null,
      over: 0,
      windowStart: now,
    }
    this.states.set(client, st)
    return st
  }

  private blockedBy(st: ClientState, bytes: number, now: number): 'messages' | 'bytes' | null {
    if (st.messages.waitMs(1, now) > 0) return 'messages'
    if (st.bytes.waitMs(bytes, now) > 0) return 'bytes'
    return null
  }

  /**
   * Counts an over-limit publish. The verdict on a window is given by the first over-limit publish after it ended,
   * so a disconnect needs the abuse to have lasted a whole window and still go on. Returns true if disconnected.
   */
  private noteOver(client: Client, st: ClientState, now: number): boolean {
    const { factor, windowMs } = this.deps.abuse
    if (now - st.windowStart >= windowMs) {
      const rate = st.messages.unlimited ? Number.POSITIVE_INFINITY : st.messages.rate
      const threshold = ((factor - 1) * rate * windowMs) / 1000
      const abusive = st.over >= threshold && now - st.windowStart < 2 * windowMs
      st.over = 0
      st.windowStart = now
      if (abusive) {
        this.deps.metrics.disconnects.inc({ role: st.role })
        this.deps.log.warn({ clientId: client.id, role: st.role }, 'disconnected: far over its rate limit for a window')
        this.forget(client)
        client.close()
        return true
      }
    }
    st.over++
    return false
  }

  private schedule(client: Client, st: ClientState, inner: Hook): void {
    if (st.timer || st.held.length === 0) return
    const head = st.held[0] as Held
    const now = this.now()
    const wait = Math.max(st.messages.waitMs(1, now), st.bytes.waitMs(head.bytes, now), 1)
    st.timer = setTimeout(() => {
      st.timer = null
      if (client.closed) {
        this.forget(client)
        return
      }
      const t = this.now()
      while (st.held.length > 0) {
        const h = st.held[0] as Held
        if (this.blockedBy(st, h.bytes, t) !== null) break
        st.held.shift()
        this.heldTotal--
        st.messages.take(1, t)
        st.bytes.take(h.bytes, t)
        inner(client, h.packet, h.done)
      }
      this.deps.metrics.throttleQueue.set(this.heldTotal)
      this.schedule(client, st, inner)
    }, wait)
  }
}

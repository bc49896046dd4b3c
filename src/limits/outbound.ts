// Slow consumers: an app that stops reading its socket (a frozen phone, a dead radio that TCP has not noticed yet)
// must not make the broker hold an unbounded queue of packets for it. Aedes writes every delivery into the stream
// whatever its buffer holds (it only waits for 'drain' to finish the delivery, and cuts the client after drainTimeout),
// so each client's deliveries pass through here first:
//  - QoS 0 (live snapshots, leaderboards): when the bytes waiting for the client exceed `softBytes`, the packet is
//    not written; the newest one per topic is kept and written when the socket drains (newest wins: a snapshot
//    supersedes the ones before it);
//  - QoS 1/2 (alerts, recommendations, RPC answers): above `hardBytes` the client is disconnected instead of being
//    buffered further. A persistent session (clean=false) already holds the packet in the session store (Aedes
//    enqueues before it delivers) and gets it on reconnect; a clean session catches up by delta sync.
//  - a client whose socket never drains is disconnected by Aedes' drainTimeout (limits.drainTimeoutMs).
// Hooked by replacing the client's deliver0/deliverQoS before its first SUBSCRIBE (at CONNECT): Aedes' subscription
// handler and its QoS 1 path both call them. Relies on Aedes 1.x internals (lib/client.js), pinned in package.json.
import type { Client, PublishPacket } from 'aedes'
import type { Duplex } from 'node:stream'
import type { LimitMetrics } from './metrics.js'

export interface OutboundLimits {
  /** bytes waiting for one client above which QoS 0 deliveries are held back (newest per topic kept); 0 = off */
  softBytes: number
  /** bytes waiting for one client above which a QoS 1/2 delivery disconnects it; 0 = off */
  hardBytes: number
  /** held-back QoS 0 topics kept per client (their newest packet each); the oldest topic goes first */
  keepTopics: number
}

type Deliver = (packet: PublishPacket, cb: () => void) => void
interface DeliveringClient {
  conn: Duplex & { socket?: Duplex }
  deliver0: Deliver
  deliverQoS: Deliver
  closed?: boolean
}

/** Bytes written for the client and not yet taken by the kernel: the guard's buffer plus the socket's beneath it. */
export function bytesWaiting(conn: Duplex & { socket?: Duplex }): number {
  return conn.writableLength + (conn.socket?.writableLength ?? 0)
}

export class OutboundGuard {
  constructor(
    private readonly limits: OutboundLimits,
    private readonly metrics: LimitMetrics,
    private readonly roleOf: (client: Client) => string | undefined,
  ) {}

  /** Wraps the client's delivery functions; call before it can subscribe (preConnect). */
  attach(client: Client): void {
    const { softBytes, hardBytes, keepTopics } = this.limits
    if (softBytes === 0 && hardBytes === 0) return
    const c = client as unknown as DeliveringClient
    const deliver0 = c.deliver0
    const deliverQoS = c.deliverQoS
    const conn = c.conn
    const metrics = this.metrics
    const role = () => this.roleOf(client) ?? 'unknown'
    let held: Map<string, PublishPacket> | null = null
    let cut = false

    const flush = () => {
      if (!held || bytesWaiting(conn) > softBytes) return
      const packets = [...held.values()]
      held = null
      metrics.outboundHeld.dec(packets.length)
      for (const p of packets) deliver0(p, noop)
    }

    c.deliver0 = (packet, cb) => {
      if (softBytes > 0 && bytesWaiting(conn) > softBytes) {
        if (!held) {
          held = new Map()
          conn.once('drain', flush)
        }
        const replaced = held.delete(packet.topic)
        if (!replaced && held.size >= keepTopics) {
          const oldest = held.keys().next().value as string
          held.delete(oldest)
          metrics.outboundHeld.dec()
        }
        held.set(packet.topic, packet)
        if (!replaced) metrics.outboundHeld.inc()
        metrics.outboundDropped.inc({ role: role() })
        setImmediate(cb)
        return
      }
      deliver0(packet, cb)
    }

    c.deliverQoS = (packet, cb) => {
      if (packet.qos === 0) {
        c.deliver0(packet, cb)
        return
      }
      if (hardBytes > 0 && bytesWaiting(conn) > hardBytes) {
        if (!cut) {
          cut = true
          metrics.outboundCuts.inc({ role: role() })
          conn.destroy(new Error(`slow consumer: more than ${hardBytes} bytes waiting for the client`))
        }
        setImmediate(cb)
        return
      }
      deliverQoS(packet, cb)
    }

    conn.once('close', () => {
      if (held) metrics.outboundHeld.dec(held.size)
      held = null
    })
  }
}

function noop(): void {}

// Readings and status are consumed by the pipeline (docs/contract.md: no firehose). Routing them on through Aedes (offline-queue
// match, mqemitter match, 'publish' event) cost ~6 % of the broker's CPU at race-day rates with no receiver, so a
// consumed packet is routed only while an admin with a filter that can match it is connected (diagnostics).
import type { Aedes, Client } from 'aedes'

/** Aedes' internal router: every PUBLISH a client sends goes through it after authorizePublish. */
type RoutePublish = (packet: object, client: Client | null, done?: (err?: Error | null) => void) => void

/**
 * The mark of a consumed packet, on the packet itself. A WeakSet did this before: its add() showed in profiles of
 * bench/compare.ts (1.3 % of the broker's CPU in self time alone, every inbound PUBLISH), and each entry is an
 * ephemeron the GC must process. A symbol-keyed property is one shared hidden-class transition, gone with the packet.
 */
const CONSUMED = Symbol('pulsegate.consumed')
type Marked = { [CONSUMED]?: true }

export class ConsumedRouting {
  private readonly tapping = new Set<Client>()
  private readonly dropped = new WeakSet<object>()

  /** authorizePublish: the pipeline takes this packet; Aedes need not route it unless someone taps. */
  consume(packet: object): void {
    ;(packet as Marked)[CONSUMED] = true
  }

  /** the rate limiter dropped this QoS 0 packet: it goes nowhere, taps included */
  drop(packet: object): void {
    this.dropped.add(packet)
  }

  /** authorizeSubscribe: an admin subscribed a filter that may match inbound telemetry. */
  tap(client: Client): void {
    this.tapping.add(client)
  }

  /** clientDisconnect: the tap is gone. */
  untap(client: Client): void {
    this.tapping.delete(client)
  }

  get taps(): number {
    return this.tapping.size
  }

  /** Replaces the broker's router so consumed packets skip it while no tap is connected. */
  install(aedes: Aedes): void {
    const internals = aedes as unknown as { publish: RoutePublish }
    const route: RoutePublish = internals.publish.bind(aedes)
    internals.publish = (packet, client, done) => {
      if ((this.tapping.size === 0 && (packet as Marked)[CONSUMED] === true) || this.dropped.has(packet)) {
        done?.(null)
        return
      }
      route(packet, client, done)
    }
  }
}

// The limits room: per-client publish rates, connection limits at CONNECT, the TLS handshake cap, and their metrics.
// The broker hooks them in through its existing hooks (preConnect, authenticate, authorizePublish) and the mTLS server.
import type { Aedes, Client, PublishPacket } from 'aedes'
import type { Registry } from 'prom-client'
import type { BrokerConfig } from '../../broker.config.js'
import type { Role } from '../identity/principal.js'
import type { Logger } from '../log.js'
import { ConnectGuard, type ConnectRefusal } from './connect-guard.js'
import { createLimitMetrics, type LimitMetrics } from './metrics.js'
import { OutboundGuard } from './outbound.js'
import { PublishLimiter } from './publish-limiter.js'

export { clientAddress } from './address.js'
export { capHandshakes } from './handshakes.js'
export { Brownout, installBrownout } from './brownout.js'

export interface LimitsDeps {
  config: BrokerConfig['limits']
  registry: Registry
  roleOf(client: Client): Role | undefined
  /** a dropped QoS 0 packet is not routed on (ConsumedRouting) */
  drop(packet: PublishPacket): void
  log: Logger
}

export class Limits {
  readonly metrics: LimitMetrics
  readonly publish: PublishLimiter
  readonly connect: ConnectGuard
  readonly outbound: OutboundGuard

  constructor(readonly deps: LimitsDeps) {
    this.metrics = createLimitMetrics(deps.registry)
    this.publish = new PublishLimiter({
      rates: deps.config.rates,
      abuse: deps.config.abuse,
      roleOf: deps.roleOf,
      drop: deps.drop,
      metrics: this.metrics,
      log: deps.log,
    })
    this.connect = new ConnectGuard({ limits: deps.config, metrics: this.metrics, log: deps.log })
    this.outbound = new OutboundGuard(deps.config.outbound, this.metrics, deps.roleOf)
  }

  /** client events the limits need: held publishes go with their connection, an ended session counts for flapping; keep-alive timeouts are counted */
  watch(broker: Aedes): void {
    broker.on('clientDisconnect', (client: Client) => {
      this.publish.forget(client)
      this.connect.ended(client)
    })
    broker.on('keepaliveTimeout', () => this.metrics.keepaliveTimeouts.inc())
  }

  stop(): void {
    this.connect.stop()
  }
}

export type { ConnectRefusal }

// The hooks put on one Aedes: the four lifecycle points (authenticate, authorize-publish, authorize-subscribe,
// forward), the client events, and around them the limits and the client-id rules (src/limits,
// pre-connect.ts): a connection refused by a limit costs no credential look-up, and a publish held by the rate
// limiter is not yet authorized or acked.
import { Aedes, type AedesOptions, type Client } from 'aedes'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { Limits } from '../limits/index.js'
import { type AuthenticateDeps, createAuthenticate } from './authenticate.js'
import { type AuthorizePublishDeps, createAuthorizePublish } from './authorize-publish.js'
import { type AuthorizeSubscribeDeps, createAuthorizeSubscribe } from './authorize-subscribe.js'
import { watchClientEvents } from './client-events.js'
import type { ConsumedRouting } from './consumed-routing.js'
import { createAuthorizeForward } from './forward.js'
import { createPreConnect, guardAuthenticate, type PreConnectDeps } from './pre-connect.js'
import type { Principals } from './types.js'

export interface HookedBrokerDeps {
  limits: BrokerConfig['limits']
  authenticate: AuthenticateDeps
  authorizePublish: AuthorizePublishDeps
  authorizeSubscribe: AuthorizeSubscribeDeps
  principals: Principals
  routing: ConsumedRouting
  metrics: Metrics
  log: Logger
  /** cluster mode's emitter, persistence and heartbeat (src/cluster) */
  aedesOptions?: Partial<AedesOptions>
  /** a device's clean DISCONNECT is its goodbye: its silence afterwards raises no runner_silent alert */
  onDeviceSignedOff(userId: string, deviceId: string): void
}

export async function createHookedBroker(d: HookedBrokerDeps): Promise<{ broker: Aedes; limits: Limits }> {
  const { principals, routing, metrics, log } = d
  const broker = await Aedes.createBroker({
    // concurrency 0: no bounded mq queue, which avoids mqemitter's stack-overflow crash with slow subscribers.
    concurrency: 0,
    connectTimeout: d.limits.connectTimeoutMs,
    drainTimeout: d.limits.drainTimeoutMs,
    maxClientsIdLength: d.limits.maxClientIdLength,
    authenticate: createAuthenticate(d.authenticate),
    authorizePublish: createAuthorizePublish(d.authorizePublish),
    authorizeSubscribe: createAuthorizeSubscribe(d.authorizeSubscribe),
    authorizeForward: createAuthorizeForward({ metrics }),
    ...d.aedesOptions,
  })
  watchClientEvents(broker, { principals, routing, metrics, log })
  const limits = new Limits({
    config: d.limits,
    registry: metrics.registry,
    roleOf: (client) => principals.get(client)?.role,
    drop: (packet) => routing.drop(packet),
    log: log.child({ stage: 'limits' }),
  })
  const admit: PreConnectDeps['admit'] = (client, id) => {
    // before its first SUBSCRIBE can capture the delivery functions (src/limits/outbound.ts)
    limits.outbound.attach(client)
    return limits.connect.admit(client, id)
  }
  const preConnect: PreConnectDeps = { admit, metrics, log }
  broker.preConnect = createPreConnect(preConnect)
  broker.authenticate = guardAuthenticate(preConnect, broker.authenticate)
  broker.authorizePublish = limits.publish.wrap(broker.authorizePublish)
  limits.watch(broker)
  broker.on('clientDisconnect', (client: Client) => {
    const p = principals.get(client)
    const clean = (client as unknown as { _disconnected?: boolean })._disconnected === true
    if (clean && p?.role === 'device' && p.userId && p.deviceId) d.onDeviceSignedOff(p.userId, p.deviceId)
  })
  return { broker, limits }
}

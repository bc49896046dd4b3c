// The broker's client events: the connection gauge by role, the end of an admin tap, and client/connection errors
// counted rather than left to crash the process.
import type { EventEmitter } from 'node:events'
import type { Aedes, Client } from 'aedes'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { clientAddress } from '../transport/connection.js'
import type { ConsumedRouting } from './consumed-routing.js'
import type { Principals } from './types.js'

export interface ClientEventDeps {
  principals: Principals
  routing: Pick<ConsumedRouting, 'untap'>
  metrics: Pick<Metrics, 'connections' | 'clientErrors'>
  log: Logger
}

export function watchClientEvents(broker: Aedes, deps: ClientEventDeps): void {
  const { principals, routing, metrics, log } = deps
  broker.on('client', (client: Client) => {
    const p = principals.get(client)
    if (p) metrics.connections.inc({ role: p.role })
    // The client's own address: after a trusted load balancer's PROXY header, not the balancer's.
    log.debug({ clientId: client.id, remote: clientAddress(client) }, 'client connected')
  })
  broker.on('clientDisconnect', (client: Client) => {
    routing.untap(client)
    const p = principals.get(client)
    if (p) metrics.connections.dec({ role: p.role })
  })
  broker.on('clientError', (_client: Client, err: Error) => {
    metrics.clientErrors.inc({ kind: 'client' })
    log.debug({ err: err.message }, 'client error')
  })
  broker.on('connectionError', (_client: Client, err: Error) => {
    metrics.clientErrors.inc({ kind: 'connection' })
    log.debug({ err: err.message }, 'connection error')
  })
  // An unhandled 'error' event would kill the process; persistence errors must not.
  ;(broker as unknown as EventEmitter).on('error', (err: Error) => log.error({ err: err.message }, 'broker error'))
}

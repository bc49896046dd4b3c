// Delivery of a PUBLISH to a subscriber: counted, passed on unchanged.
import type { Metrics } from '../metrics.js'
import type { AuthorizeForwardHook } from './types.js'

export interface ForwardDeps {
  metrics: Pick<Metrics, 'packetsOut'>
}

export function createAuthorizeForward(deps: ForwardDeps): AuthorizeForwardHook {
  const { metrics } = deps
  return (_client, packet) => {
    metrics.packetsOut.inc()
    return packet
  }
}

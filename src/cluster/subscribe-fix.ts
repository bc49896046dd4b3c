// Work-around for aedes 1.2 + aedes-persistence 11 on a Redis emitter (scale-out.md §1.5 B1): a clean:false client
// SUBSCRIBing to several topics in one packet never got its SUBACK, because aedes calls addSubscriptions once per
// topic with the whole array and each call overwrote the previous one's broadcast waiter. Collapsing the repeated
// calls for one array into one keeps one waiter, which resolves. Verified against aedes#569's reproduction.

interface SubscriptionsPersistence {
  addSubscriptions(client: unknown, subs: object, cb?: (...args: unknown[]) => void): unknown
}

export function applySubscribeFix(persistence: SubscriptionsPersistence): void {
  const inflight = new WeakMap<object, unknown>()
  const add = persistence.addSubscriptions.bind(persistence)
  persistence.addSubscriptions = (client, subs, cb) => {
    if (cb) return add(client, subs, cb)
    let p = inflight.get(subs)
    if (!p) {
      p = add(client, subs)
      inflight.set(subs, p)
    }
    return p
  }
}

interface WillPersistence {
  putWill(client: unknown, packet: unknown, cb?: (err: Error | null, client?: unknown) => void): unknown
}

/**
 * Wills are kept by the node the client is on (Aedes publishes client.will from memory when the connection drops
 * uncleanly), never in Redis: a dead node's stored wills are published by the survivors with `client === null`,
 * which pulsegate's authorizePublish refuses, so Aedes would report an error every 4 heartbeats and never delete
 * them (scale-out.md B6). Losing the will of a client whose node died is the trade.
 */
export function keepWillsLocal(persistence: WillPersistence): void {
  persistence.putWill = (client, _packet, cb) => {
    if (cb) {
      cb(null, client)
      return undefined
    }
    return Promise.resolve(client)
  }
}

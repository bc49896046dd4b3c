// Which users have an app connected to this node: a JWT client of role `app` (a phone bridge is not an app — it may
// relay BLE in the background with nobody looking). Kept per client object, so a session taken over (same client id,
// new connection) or a disconnect seen twice never miscounts.
//
// Node-local: in cluster mode an app connected to another node is not seen here, and its user gets a push as well as
// the MQTT message — a duplicate notification, never a missed one (docs/outputs.md "Webhooks").
import type { Aedes, Client } from 'aedes'
import type { Principal } from '../../identity/principal.js'

export class AppPresence {
  private readonly apps = new Map<string, Set<Client>>()

  attach(aedes: Aedes, principals: WeakMap<Client, Principal>): void {
    aedes.on('client', (client: Client) => {
      const p = principals.get(client)
      if (p?.role !== 'app' || !p.userId) return
      const set = this.apps.get(p.userId) ?? new Set<Client>()
      set.add(client)
      this.apps.set(p.userId, set)
    })
    aedes.on('clientDisconnect', (client: Client) => {
      const p = principals.get(client)
      if (p?.role !== 'app' || !p.userId) return
      const set = this.apps.get(p.userId)
      if (!set) return
      set.delete(client)
      if (set.size === 0) this.apps.delete(p.userId)
    })
  }

  connected(userId: string): boolean {
    return this.apps.has(userId)
  }
}

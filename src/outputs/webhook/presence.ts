// Which users have an app connected: a JWT client of role `app` (a phone bridge is not an app — it may relay BLE in
// the background with nobody looking). Kept per client object, so a session taken over (same client id, new
// connection) or a disconnect seen twice never miscounts.
//
// This node's apps are known here synchronously. In cluster mode the cluster room shares them through Redis
// (src/cluster/presence.ts) and sets `remote`, asked before a push is sent: an app on another node then spares its
// user the push too. When Redis cannot tell, the answer is "not connected" — a duplicate notification, never a
// missed one.
import type { Aedes, Client } from 'aedes'
import type { Principal } from '../../identity/principal.js'

export type PresenceListener = (userId: string, present: boolean) => void

export class AppPresence {
  private readonly apps = new Map<string, Set<Client>>()
  private readonly listeners: PresenceListener[] = []
  /** apps of this user connected to another node (cluster mode) */
  remote: ((userId: string) => Promise<boolean>) | null = null

  attach(aedes: Aedes, principals: WeakMap<Client, Principal>): void {
    aedes.on('client', (client: Client) => {
      const p = principals.get(client)
      if (p?.role !== 'app' || !p.userId) return
      const set = this.apps.get(p.userId) ?? new Set<Client>()
      set.add(client)
      this.apps.set(p.userId, set)
      if (set.size === 1) for (const l of this.listeners) l(p.userId, true)
    })
    aedes.on('clientDisconnect', (client: Client) => {
      const p = principals.get(client)
      if (p?.role !== 'app' || !p.userId) return
      const set = this.apps.get(p.userId)
      if (!set?.delete(client)) return
      if (set.size > 0) return
      this.apps.delete(p.userId)
      for (const l of this.listeners) l(p.userId, false)
    })
  }

  /** Called when a user's first app connects to this node and when their last one leaves it. */
  onChange(listener: PresenceListener): void {
    this.listeners.push(listener)
  }

  /** users with an app on this node */
  users(): IterableIterator<string> {
    return this.apps.keys()
  }

  /** an app connected to this node */
  connected(userId: string): boolean {
    return this.apps.has(userId)
  }

  /** an app connected to this node or, in cluster mode, to another one */
  async connectedAnywhere(userId: string): Promise<boolean> {
    if (this.apps.has(userId)) return true
    if (!this.remote) return false
    try {
      return await this.remote(userId)
    } catch {
      return false
    }
  }
}

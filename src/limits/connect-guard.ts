// Connection limits, decided at CONNECT (preConnect) before any credential is checked, so a refused connection costs
// no database look-up: open connections per client address, and EMQX-style flapping detection — a client id that
// ends N sessions within a window from one address is banned for a while (counted and logged). Only sessions that
// were established count, as in EMQX: attempts refused for a registry outage (CONNACK 3) must not ban a device.
import type { Client } from 'aedes'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import { clientAddress } from './address.js'
import type { LimitMetrics } from './metrics.js'

export interface ConnectRefusal {
  reason: 'ip_connection_limit' | 'flapping_ban'
  /** CONNACK return code: 3 (server unavailable: come back later) for the address quota, 5 for a ban */
  code: 3 | 5
}

export interface ConnectGuardDeps {
  limits: Pick<BrokerConfig['limits'], 'maxConnectionsPerIp' | 'flapping'>
  metrics: LimitMetrics
  log: Logger
  now?: () => number
}

export class ConnectGuard {
  private readonly perAddress = new Map<string, number>()
  /** ends of sessions per `clientId@address`, oldest first, within the flapping window */
  private readonly connects = new Map<string, number[]>()
  private readonly keys = new WeakMap<Client, string>()
  private readonly bans = new Map<string, number>()
  private readonly sweeper: NodeJS.Timeout | null
  private readonly now: () => number

  constructor(private readonly deps: ConnectGuardDeps) {
    this.now = deps.now ?? Date.now
    const { maxConnects, windowMs } = deps.limits.flapping
    // Forgets idle keys, so the maps hold only clients seen within the window (or banned).
    this.sweeper = maxConnects > 0 ? setInterval(() => this.sweep(), windowMs) : null
    this.sweeper?.unref()
  }

  /** Admits or refuses a CONNECT; an admitted one is counted against its address until its connection closes. */
  admit(client: Client, clientId: string): ConnectRefusal | null {
    const address = clientAddress(client)
    // A zero-byte id names no one yet (the server assigns it after authentication): not tracked for flapping.
    const key = clientId ? `${clientId}@${address}` : null
    const refusal = (key ? this.banned(key) : null) ?? this.addressQuota(address)
    if (refusal) {
      this.deps.metrics.connectRefusals.inc({ reason: refusal.reason })
      return refusal
    }
    if (key && this.deps.limits.flapping.maxConnects > 0) this.keys.set(client, key)
    if (this.deps.limits.maxConnectionsPerIp > 0) {
      this.perAddress.set(address, (this.perAddress.get(address) ?? 0) + 1)
      let released = false
      const release = () => {
        if (released) return
        released = true
        const n = (this.perAddress.get(address) ?? 1) - 1
        if (n <= 0) this.perAddress.delete(address)
        else this.perAddress.set(address, n)
      }
      client.conn.once('close', release)
      if (client.conn.destroyed) release()
    }
    return null
  }

  /** open connections counted against an address (0 when the per-address limit is off) */
  openFrom(address: string): number {
    return this.perAddress.get(address) ?? 0
  }

  stop(): void {
    if (this.sweeper) clearInterval(this.sweeper)
  }

  private addressQuota(address: string): ConnectRefusal | null {
    const max = this.deps.limits.maxConnectionsPerIp
    if (max > 0 && (this.perAddress.get(address) ?? 0) >= max) return { reason: 'ip_connection_limit', code: 3 }
    return null
  }

  private banned(key: string): ConnectRefusal | null {
    const until = this.bans.get(key)
    if (until === undefined) return null
    if (this.now() < until) return { reason: 'flapping_ban', code: 5 }
    this.bans.delete(key)
    this.deps.metrics.bannedClients.set(this.bans.size)
    return null
  }

  /** clientDisconnect: a session ended; the Nth within the window bans its client id at its address */
  ended(client: Client): void {
    const key = this.keys.get(client)
    if (!key) return
    this.keys.delete(client)
    const { maxConnects, windowMs, banMs } = this.deps.limits.flapping
    const now = this.now()
    const times = (this.connects.get(key) ?? []).filter((t) => now - t < windowMs)
    times.push(now)
    if (times.length < maxConnects) {
      this.connects.set(key, times)
      return
    }
    this.connects.delete(key)
    this.bans.set(key, now + banMs)
    this.deps.metrics.flappingBans.inc()
    this.deps.metrics.bannedClients.set(this.bans.size)
    this.deps.log.warn({ client: key, sessions: times.length, windowMs, banMs }, 'flapping: client banned')
  }

  private sweep(): void {
    const now = this.now()
    const { windowMs } = this.deps.limits.flapping
    for (const [key, times] of this.connects) {
      if (times.length === 0 || now - (times[times.length - 1] as number) >= windowMs) this.connects.delete(key)
    }
    for (const [key, until] of this.bans) if (now >= until) this.bans.delete(key)
    this.deps.metrics.bannedClients.set(this.bans.size)
  }
}

// Abandoned persistent sessions (scale-out.md B4): MQTT 3.1.1 has no session expiry, so an app uninstalled with a
// clean:false session would keep its subscriptions in every node's trie and have every QoS 1 output queued for it
// in Redis forever. Each node marks when its persistent clients were last seen (connect, disconnect, and while still
// connected at every round); one node at a time (a lease) removes sessions idle for longer than the limit.
import type { Aedes, Client } from 'aedes'
import type { Redis } from 'ioredis'
import type { Logger } from '../log.js'
import type { Leases } from './leases.js'
import type { ClusterMetrics } from './metrics.js'

interface CleanablePersistence {
  cleanSubscriptions(client: { id: string }): Promise<unknown>
}

const SEEN = 'seen' // a hash under the sessions' key prefix: client id → last seen (ms)

export class SessionJanitor {
  private timer: NodeJS.Timeout | null = null
  private running: Promise<void> | null = null

  constructor(
    private readonly aedes: Aedes,
    private readonly persistence: CleanablePersistence,
    /** the persistence's connection: keys are under the deployment's prefix and db */
    private readonly sessions: Redis,
    private readonly leases: Leases,
    private readonly leaseKey: string,
    private readonly metrics: ClusterMetrics,
    private readonly log: Logger,
    private readonly idleMs: number,
    private readonly intervalMs: number,
  ) {}

  start(): void {
    const mark = (client: Client) => {
      if (client.clean === false && client.id) void this.sessions.hset(SEEN, client.id, Date.now()).catch(() => {})
    }
    this.aedes.on('client', mark)
    this.aedes.on('clientDisconnect', mark)
    if (this.idleMs === 0) return
    this.timer = setInterval(() => {
      this.running ??= this.sweep().then(
        () => {
          this.running = null
        },
        () => {
          this.running = null
        },
      )
    }, this.intervalMs)
    this.timer.unref()
  }

  /** One round; returns the client ids removed. Exposed for operations and tests. */
  async sweep(now = Date.now()): Promise<string[]> {
    const removed: string[] = []
    try {
      const connected = Object.values((this.aedes as unknown as { clients: Record<string, Client> }).clients)
      const live = connected.filter((c) => c.clean === false && c.id)
      if (live.length > 0) await this.sessions.hset(SEEN, ...live.flatMap((c) => [c.id, String(now)]))
      const { owner } = await this.leases.claim(this.leaseKey)
      if (owner !== this.leases.self) return removed
      let cursor = '0'
      do {
        const [next, kv] = await this.sessions.hscan(SEEN, cursor, 'COUNT', 500)
        cursor = next
        for (let i = 0; i + 1 < kv.length; i += 2) {
          const id = kv[i] as string
          if (now - Number(kv[i + 1]) <= this.idleMs) continue
          // Every node's trie drops the subscriptions (a sub/rm broadcast); the queued packets go with the list.
          await this.persistence.cleanSubscriptions({ id })
          await this.sessions.del(`outgoing:${encodeURIComponent(id)}`)
          await this.sessions.hdel(SEEN, id)
          removed.push(id)
          this.metrics.sessionsRemoved.inc()
        }
      } while (cursor !== '0')
      await this.leases.release(this.leaseKey)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster: session janitor round failed')
    }
    if (removed.length > 0) this.log.info({ sessions: removed.length }, 'cluster: abandoned sessions removed')
    return removed
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await this.running
  }
}

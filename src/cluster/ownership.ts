// One owner per user's output state across the cluster (scale-out.md §5.4). A user whose devices sit on two nodes
// would otherwise have two partial windows: a retained `live` that flaps between them and episodes that never
// resolve. The owner holds a lease in Redis; every other node commits the user's readings as before (the readings
// path stays node-local) and forwards the committed batch to the owner on a plain Redis channel, outside the MQTT
// topic space. Only the owner feeds the output engine, so only it publishes the user's live snapshots and alerts.
import type { Redis } from 'ioredis'
import type { Logger } from '../log.js'
import type { CommittedBatch } from '../pipeline/ingest.js'
import type { ClusterMetrics } from './metrics.js'
import type { Leases } from './leases.js'

/** the part of the output engine ownership drives */
export interface OutputsFeed {
  onCommitted(batch: CommittedBatch): void
  /** whether any state of the user is held */
  holds(userId: string): boolean
  /** drops what is held about the user (state, pending snapshot); reloaded from the database on next use */
  forget(userId: string): Promise<void>
}

export class UserOwnership {
  /** users this node owns → when a batch of theirs last arrived */
  private readonly owned = new Map<string, number>()
  /** per-user routing in arrival order while a claim is under way */
  private readonly chains = new Map<string, Promise<void>>()
  /** users whose stale state is being dropped after this node gained them: batches forwarded meanwhile wait */
  private readonly resetting = new Map<string, Promise<void>>()
  private timer: NodeJS.Timeout | null = null
  private readonly channel: string

  constructor(
    private readonly leases: Leases,
    private readonly pub: Redis,
    private readonly sub: Redis,
    private readonly prefix: string,
    private readonly outputs: OutputsFeed,
    private readonly metrics: ClusterMetrics,
    private readonly log: Logger,
    private readonly leaseMs: number,
  ) {
    this.channel = this.nodeChannel(leases.self)
  }

  private nodeChannel(node: string): string {
    return `${this.prefix}:node:${node}`
  }

  private key(userId: string): string {
    return `${this.prefix}:own:${userId}`
  }

  async start(): Promise<void> {
    this.sub.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return
      let batch: CommittedBatch
      try {
        batch = JSON.parse(message) as CommittedBatch
      } catch {
        this.metrics.forwarded.inc({ direction: 'bad' })
        return
      }
      this.metrics.forwarded.inc({ direction: 'in' })
      this.owned.set(batch.userId, Date.now())
      const reset = this.resetting.get(batch.userId)
      if (reset) void reset.then(() => this.outputs.onCommitted(batch))
      else this.outputs.onCommitted(batch)
    })
    await this.sub.subscribe(this.channel)
    this.timer = setInterval(() => void this.renew(), Math.max(250, Math.floor(this.leaseMs / 3)))
    this.timer.unref()
  }

  /** The ingest stage's committed batches come here instead of straight to the output engine. */
  route(batch: CommittedBatch): void {
    const userId = batch.userId
    const pending = this.chains.get(userId)
    if (!pending && this.owned.has(userId)) {
      this.owned.set(userId, Date.now())
      this.outputs.onCommitted(batch)
      return
    }
    const next = (pending ?? Promise.resolve())
      .then(() => this.deliver(batch))
      .catch((err: Error) => {
        this.metrics.forwarded.inc({ direction: 'failed' })
        this.log.warn({ err: err.message, userId }, 'cluster: output routing failed; batch handled locally')
        // Redis unreachable: the outputs of this batch are better produced here than not at all.
        this.outputs.onCommitted(batch)
      })
    this.chains.set(userId, next)
    void next.finally(() => {
      if (this.chains.get(userId) === next) this.chains.delete(userId)
    })
  }

  private async deliver(batch: CommittedBatch, retry = true): Promise<void> {
    const userId = batch.userId
    if (this.owned.has(userId)) {
      this.owned.set(userId, Date.now())
      this.outputs.onCommitted(batch)
      return
    }
    const { owner, gained } = await this.leases.claim(this.key(userId))
    if (owner === this.leases.self) {
      this.owned.set(userId, Date.now())
      if (gained && this.outputs.holds(userId)) {
        // What this node still holds from an earlier ownership is stale: another node may have moved the user's
        // episodes and windows on since. The engine reloads it from the database.
        const reset = this.outputs.forget(userId)
        this.resetting.set(userId, reset)
        await reset.finally(() => this.resetting.delete(userId))
      }
      this.outputs.onCommitted(batch)
      return
    }
    const receivers = await this.pub.publish(this.nodeChannel(owner), JSON.stringify(batch))
    if (receivers === 0 && retry) {
      // Nobody listens on the owner's channel: it died (kill -9) with its lease still running. Take the user over
      // now rather than lose their outputs until the lease expires.
      await this.leases.evict(this.key(userId), owner)
      return this.deliver(batch, false)
    }
    this.metrics.forwarded.inc({ direction: receivers === 0 ? 'failed' : 'out' })
  }

  /** Keeps the leases of users still active, lets go of idle ones, and drops users whose lease was lost. */
  private async renew(): Promise<void> {
    const now = Date.now()
    const keep: string[] = []
    for (const [userId, last] of this.owned) {
      if (now - last > 2 * this.leaseMs) {
        this.owned.delete(userId)
        void this.leases.release(this.key(userId)).catch(() => {})
      } else keep.push(userId)
    }
    let res: boolean[]
    try {
      res = await this.leases.renewMany(keep.map((u) => this.key(u)))
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'cluster: lease renewal failed')
      return
    }
    for (let i = 0; i < keep.length; i++) {
      if (res[i]) continue
      const userId = keep[i] as string
      // Expired (this node stalled) and possibly taken: whoever holds it now reloads from the database.
      this.owned.delete(userId)
      this.metrics.leasesLost.inc()
      void this.outputs.forget(userId)
    }
  }

  owns(userId: string): boolean {
    return this.owned.has(userId)
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer)
    await Promise.allSettled([...this.chains.values()])
    const ids = [...this.owned.keys()]
    this.owned.clear()
    // Hand the users over at once rather than after a lease time.
    await Promise.allSettled(ids.map((u) => this.leases.release(this.key(u))))
  }
}

// One leaderboard publisher for the whole cluster (scale-out.md §5.4). Every node still raises its runners'
// distances in the shared Redis boards; the events whose board changed go into one shared set, and only the node
// holding the leader lease takes that set each tick and publishes each board once. Without it every node would
// publish every board it touched: N× the retained writes, N× the refresh, N× the messages to each subscriber.
import type { Redis } from 'ioredis'
import type { BoardCoordinator } from '../outputs/leaderboard-tick.js'
import type { Leases } from './leases.js'
import type { ClusterMetrics } from './metrics.js'

export class LeaderBoards implements BoardCoordinator {
  private readonly dirtyKey: string
  private readonly leaseKey: string
  private leader = false

  constructor(
    private readonly redis: Redis,
    private readonly leases: Leases,
    prefix: string,
    private readonly metrics: ClusterMetrics,
  ) {
    this.dirtyKey = `${prefix}:boards:dirty`
    this.leaseKey = `${prefix}:lead:boards`
  }

  async collect(changed: readonly string[], sync: (eventId: string) => Promise<void>): Promise<string[]> {
    if (changed.length > 0) {
      // This node's raised distances reach Redis before the leader is told the board changed.
      for (const e of changed) await sync(e)
      await this.redis.sadd(this.dirtyKey, ...changed)
    }
    this.leader = this.leader
      ? (await this.leases.renew(this.leaseKey)) || (await this.leases.claim(this.leaseKey)).gained
      : (await this.leases.claim(this.leaseKey)).owner === this.leases.self
    if (!this.leader) return []
    const res = await this.redis.multi().smembers(this.dirtyKey).del(this.dirtyKey).exec()
    const members = (res?.[0]?.[1] as string[] | undefined) ?? []
    this.metrics.boardsPublished.inc(members.length)
    return members
  }

  get isLeader(): boolean {
    return this.leader
  }

  async stop(): Promise<void> {
    if (this.leader) await this.leases.release(this.leaseKey).catch(() => {})
    this.leader = false
  }
}

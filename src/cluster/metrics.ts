// Cluster-mode metrics. Every metric of a clustered node also carries the `node` label (set on the registry).
import { Counter, type Registry } from 'prom-client'

export interface ClusterMetrics {
  forwarded: Counter<'direction'>
  leasesLost: Counter
  sessionsRemoved: Counter
  boardsPublished: Counter
}

export function createClusterMetrics(r: Registry): ClusterMetrics {
  return {
    forwarded: new Counter({
      name: 'pulsegate_cluster_forwarded_batches_total',
      help: "committed batches forwarded to / received from their user's owner node (out, in, failed, bad)",
      labelNames: ['direction'],
      registers: [r],
    }),
    leasesLost: new Counter({
      name: 'pulsegate_cluster_leases_lost_total',
      help: 'user ownership leases found expired and taken at renewal (the node stalled)',
      registers: [r],
    }),
    sessionsRemoved: new Counter({
      name: 'pulsegate_cluster_sessions_removed_total',
      help: 'abandoned persistent sessions removed by the janitor',
      registers: [r],
    }),
    boardsPublished: new Counter({
      name: 'pulsegate_cluster_boards_published_total',
      help: 'leaderboards this node published as the leaderboard leader',
      registers: [r],
    }),
  }
}

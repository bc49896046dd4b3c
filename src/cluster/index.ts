// Cluster mode (docs/cluster.md): N identical pulsegate processes on one Redis and one PostgreSQL act as one broker.
// On when PULSEGATE_REDIS_URL is set together with a server database; without Redis nothing here runs. broker.ts
// only assembles: the Aedes options come from aedesOptions, the rest is wired by attach().
//
// What crosses nodes (through Redis): outputs, device config, $SYS, persistent sessions and retained messages.
// What never does: readings and status (ConsumedRouting drops them before Aedes routes them), and the commit path.
import crypto from 'node:crypto'
import type { Aedes } from 'aedes'
import { type BrokerConfig, ConfigError } from '../../broker.config.js'
import type { Principals } from '../hooks/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { OutputEngine } from '../outputs/engine.js'
import type { AppPresence } from '../outputs/webhook/presence.js'
import type { CommittedBatch } from '../pipeline/ingest.js'
import type { Db } from '../store/db.js'
import { type AedesRedisParts, openAedesRedis } from './aedes-redis.js'
import { LeaderBoards } from './boards.js'
import { type DeviceResume, resumeDevicesOnConnect } from './device-moves.js'
import { SessionJanitor } from './janitor.js'
import { Leases } from './leases.js'
import { createClusterMetrics } from './metrics.js'
import { UserOwnership } from './ownership.js'
import { type SharedPresence, sharePresence } from './presence.js'
import { connectRedis } from './redis-conn.js'

export interface Cluster {
  nodeName: string
  /** this start's identity in leases (name + nonce) */
  self: string
  /** spread into Aedes.createBroker's options: the Redis emitter and persistence, the heartbeat */
  aedesOptions: { mq: AedesRedisParts['mq']; persistence: AedesRedisParts['persistence']; heartbeatInterval: number }
  /** the ingest stage's committed batches go here: to this node's outputs or to the user's owner */
  route(batch: CommittedBatch): void
  attach(deps: {
    aedes: Aedes
    db: Db
    ingest: DeviceResume
    outputs: OutputEngine
    principals: Principals
    /** the webhook output's app presence, shared with the other nodes (absent without webhooks) */
    presence?: AppPresence | undefined
  }): Promise<void>
  janitor(): SessionJanitor | null
  /** before Aedes closes: hand the leases over, stop the timers */
  stop(): Promise<void>
  /** after Aedes closed */
  close(): Promise<void>
}

/** null when cluster mode is off (no Redis); a ConfigError when Redis is set on the embedded, one-process store. */
export function openCluster(config: BrokerConfig, log: Logger, metrics: Metrics): Cluster | null {
  const url = config.redisUrl
  if (!url) return null
  if (!config.databaseUrl)
    throw new ConfigError([
      'redisUrl (PULSEGATE_REDIS_URL): cluster mode needs a server database (PULSEGATE_DATABASE_URL); the embedded store serves one process only — unset one of them',
    ])
  const cfg = config.cluster
  if (cfg.sessionIdleMs > 0 && cfg.sessionIdleMs < 2 * cfg.janitorIntervalMs)
    throw new ConfigError([
      'cluster.sessionIdleMs (PULSEGATE_CLUSTER_SESSION_IDLE_MS): at least twice cluster.janitorIntervalMs, or connected sessions on other nodes could look idle between their marks',
    ])
  const nodeName = config.node.name
  const self = `${nodeName}:${crypto.randomBytes(4).toString('hex')}`
  const clog = log.child({ node: nodeName })

  const cm = createClusterMetrics(metrics.registry)
  const parts = openAedesRedis(url, cfg, clog)
  const cmd = connectRedis(url, cfg, clog, 'leases')
  const sub = connectRedis(url, cfg, clog, 'forward-sub')
  const leases = new Leases(cmd, self, cfg.leaseMs)
  const boards = new LeaderBoards(cmd, leases, cfg.prefix, cm)
  let ownership: UserOwnership | null = null
  let janitor: SessionJanitor | null = null
  let presence: SharedPresence | null = null
  // Batches committed before attach() (none: listeners start after it) would have no owner to go to.
  let early: ((b: CommittedBatch) => void) | null = null

  return {
    nodeName,
    self,
    aedesOptions: { mq: parts.mq, persistence: parts.persistence, heartbeatInterval: cfg.heartbeatMs },
    route(batch) {
      if (ownership) ownership.route(batch)
      else early?.(batch)
    },
    async attach({ aedes, db, ingest, outputs, principals, presence: apps }) {
      if (apps) presence = sharePresence(apps, cmd, cfg.prefix, self, clog)
      early = (b) => outputs.onCommitted(b)
      ownership = new UserOwnership(leases, cmd, sub, cfg.prefix, outputs, cm, clog, cfg.leaseMs)
      await ownership.start()
      outputs.coordinateBoards(boards)
      // The CONNACK waits for the device's last fix: a CONNECT-path look-up, so the identity lane.
      resumeDevicesOnConnect(aedes, { db: db.lane('identity'), principals, ingest, log: clog })
      janitor = new SessionJanitor(
        aedes,
        parts.persistence as unknown as ConstructorParameters<typeof SessionJanitor>[1],
        parts.sessionsConn,
        leases,
        `${cfg.prefix}:lead:janitor`,
        cm,
        clog,
        cfg.sessionIdleMs,
        cfg.janitorIntervalMs,
      )
      janitor.start()
      clog.info({ self, prefix: cfg.prefix }, 'cluster mode: on')
    },
    janitor: () => janitor,
    async stop() {
      await presence?.stop()
      await janitor?.stop()
      await ownership?.stop()
      await boards.stop()
    },
    async close() {
      await parts.close()
      for (const c of [cmd, sub]) await c.quit().catch(() => c.disconnect())
    },
  }
}

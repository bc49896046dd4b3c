import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Db } from './db.js'
import { openEmbedded } from './embedded.js'
import type { LaneOptions } from './lanes.js'
import { openPostgres } from './postgres.js'

/** The lanes' configured bounds and the broker's metrics, for every gate the broker opens (its pool, the writer's). */
export function laneOptions(config: BrokerConfig, metrics?: Metrics): LaneOptions {
  const m = metrics && { depth: metrics.dbQueueDepth, wait: metrics.dbQueueWait, rejected: metrics.dbQueueRejected }
  return { settings: config.databaseLanes, ...(m ? { metrics: m } : {}) }
}

/** The configured server, or the embedded TimescaleDB under the data dir when none is configured. */
export async function openDb(config: BrokerConfig, log: Logger, metrics?: Metrics): Promise<Db> {
  const lanes = laneOptions(config, metrics)
  if (config.databaseUrl) return openPostgres(config.databaseUrl, config.databasePoolSize, log, lanes)
  return openEmbedded(config.dataDir, log, config.embeddedThread, lanes)
}

/** The group-commit writer's own connections on a server (ingest.writers of them, gated like the pool); the
 *  embedded store has one session, so the writer shares it (and its gate, where commit goes first). */
export function openWriterDb(config: BrokerConfig, db: Db, log: Logger, metrics?: Metrics): Db {
  if (!config.databaseUrl) return db
  return openPostgres(config.databaseUrl, config.ingest.writers, log, laneOptions(config, metrics))
}

import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Db } from './db.js'
import { openEmbedded } from './embedded.js'
import { openPostgres } from './postgres.js'

/** The configured server, or the embedded TimescaleDB under the data dir when none is configured. */
export async function openDb(config: BrokerConfig, log: Logger): Promise<Db> {
  if (config.databaseUrl) return openPostgres(config.databaseUrl, config.databasePoolSize, log)
  return openEmbedded(config.dataDir, log, config.embeddedThread)
}

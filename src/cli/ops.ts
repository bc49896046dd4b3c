// Registry operations from outside the broker process (CLI, simulator): against the configured server, the embedded
// store directly when no broker holds it, or a running broker's admin RPC when it owns the embedded store.
import type { BrokerConfig } from '../../broker.config.js'
import { Tokens } from '../identity/tokens.js'
import { createLogger, type Logger } from '../log.js'
import { openAuditLog } from '../ops/audit.js'
import type { AuditActor } from '../ops/audit-types.js'
import { eraseUser } from '../ops/erase.js'
import { openPrivacyServices, type PrivacyServices } from '../ops/privacy-services.js'
import type { Db } from '../store/db.js'
import { embeddedOwner, openEmbedded } from '../store/embedded.js'
import { migrate } from '../store/migrate.js'
import { openPostgres } from '../store/postgres.js'
import { boardPrefix, RedisLeaderboard } from '../outputs/leaderboard.js'
import { Registry } from '../store/registry.js'
import { type RpcRequest, rpcSchema, runRpc } from '../transport/http-routes.js'

export type RunOp = (req: RpcRequest) => Promise<unknown>

/**
 * The running broker to go through (its HTTP base URL and an admin token): one named by the caller (`brokerUrl`: a
 * broker on PostgreSQL, whose database the CLI could also reach directly) or the one owning the embedded store; or
 * null: go offline.
 */
export async function liveBroker(
  cfg: BrokerConfig,
  brokerUrl?: string,
): Promise<{ baseUrl: string; token: string } | null> {
  if (brokerUrl) {
    const token = await new Tokens(cfg).sign({ sub: 'cli', role: 'admin', ttl: 60 })
    return { baseUrl: brokerUrl.replace(/\/+$/, ''), token }
  }
  const owner = cfg.databaseUrl ? null : embeddedOwner(cfg.dataDir)
  if (!owner) return null
  if (!owner.httpPort)
    throw new Error(`the embedded database is held by process ${owner.pid}, which is still starting; try again`)
  const host = !owner.host || owner.host === '0.0.0.0' || owner.host === '::' ? '127.0.0.1' : owner.host
  const token = await new Tokens(cfg).sign({ sub: 'cli', role: 'admin', ttl: 60 })
  return { baseUrl: `http://${host}:${owner.httpPort}`, token }
}

/** Runs fn against the configured store opened by this process (migrated), and closes it. */
export async function withStore<T>(cfg: BrokerConfig, fn: (db: Db, log: Logger) => Promise<T>): Promise<T> {
  const log = createLogger(process.env.PULSEGATE_LOG_LEVEL ?? 'warn', 'pulsegate-cli')
  const db = cfg.databaseUrl ? openPostgres(cfg.databaseUrl, 1, log) : await openEmbedded(cfg.dataDir, log)
  try {
    await migrate(db, log)
    return await fn(db, log)
  } finally {
    await db.close()
  }
}

/**
 * Runs registry operations where the data lives: the configured server; the embedded store directly when no broker
 * holds it; or, when a running broker owns the embedded store, through that broker's admin RPC.
 */
export async function withOps<T>(
  cfg: BrokerConfig,
  fn: (op: (req: RpcRequest) => Promise<unknown>) => Promise<T>,
  opts: { brokerUrl?: string } = {},
): Promise<T> {
  const live = await liveBroker(cfg, opts.brokerUrl)
  if (live) {
    return fn(async (req) => {
      const res = await fetch(`${live.baseUrl}/admin/rpc`, {
        method: 'POST',
        headers: { authorization: `Bearer ${live.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(rpcSchema.parse(req)),
      })
      const body = (await res.json()) as { error?: string }
      if (!res.ok) throw new Error(body.error ?? `broker answered HTTP ${res.status}`)
      return body
    })
  }
  return withStore(cfg, async (db, log) => {
    const registry = new Registry(db)
    // Privacy operations derive pseudonyms and encrypt names here, with this process's keys (checked against the
    // database's key fingerprints, so a CLI holding another key is refused rather than writing unlinkable ids).
    // Offline, processing steps (device.revoke, consent changes, …) are recorded as the CLI's; the broker records its
    // RPC calls itself.
    const audit = openAuditLog(db, cfg, log)
    let privacy: Promise<PrivacyServices> | null = null
    const services = () => {
      privacy ??= openPrivacyServices(cfg, db, { audit, log })
      return privacy
    }
    // Offline erasure: the database alone, and the leaderboards too when they live in Redis.
    let redis: RedisLeaderboard | null = null
    const erase = (userId: string, actor: AuditActor) => {
      redis ??= cfg.redisUrl ? new RedisLeaderboard(cfg.redisUrl, boardPrefix(cfg.cluster.prefix)) : null
      return eraseUser(db, userId, { audit, actor, log, ...(redis ? { leaderboard: redis } : {}) })
    }
    try {
      return await fn((req) =>
        runRpc(registry, req, {
          services,
          source: 'cli',
          audit,
          actor: { role: 'cli', id: null },
          db,
          config: cfg,
          erase,
        }),
      )
    } finally {
      await audit.stop()
      await (redis as RedisLeaderboard | null)?.close()
    }
  })
}

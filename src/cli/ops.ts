// Registry operations from outside the broker process (CLI, simulator): against the configured server, the embedded
// store directly when no broker holds it, or a running broker's admin RPC when it owns the embedded store or is named.
import type { BrokerConfig } from '../../broker.config.js'
import { Tokens } from '../identity/tokens.js'
import type { AuditActor } from '../ops/audit-types.js'
import { createLogger } from '../log.js'
import { embeddedOwner, openEmbedded } from '../store/embedded.js'
import { eraseUser } from '../ops/erase.js'
import { logAuditSink, openPrivacyServices, type PrivacyServices } from '../ops/privacy-services.js'
import { RedisLeaderboard } from '../outputs/leaderboard.js'
import { migrate } from '../store/migrate.js'
import { openPostgres } from '../store/postgres.js'
import { Registry } from '../store/registry.js'
import { type RpcRequest, rpcSchema, runRpc } from '../transport/http-routes.js'

export type RunOp = (req: RpcRequest) => Promise<unknown>

/**
 * Runs registry operations where the data lives: the configured server; the embedded store directly when no broker
 * holds it; or, when a running broker owns the embedded store (or `brokerUrl` names one), through its admin RPC.
 */
export async function withOps<T>(
  cfg: BrokerConfig,
  fn: (op: (req: RpcRequest) => Promise<unknown>) => Promise<T>,
  opts: { brokerUrl?: string } = {},
): Promise<T> {
  const log = createLogger(process.env.PULSEGATE_LOG_LEVEL ?? 'warn', 'pulsegate-cli')
  const owner = cfg.databaseUrl ? null : embeddedOwner(cfg.dataDir)
  // A broker named by the caller (one on PostgreSQL, whose database the CLI could also reach directly) or the one
  // owning the embedded store.
  let base: string | null = opts.brokerUrl?.replace(/\/+$/, '') ?? null
  if (!base && owner) {
    if (!owner.httpPort)
      throw new Error(`the embedded database is held by process ${owner.pid}, which is still starting; try again`)
    const host = !owner.host || owner.host === '0.0.0.0' || owner.host === '::' ? '127.0.0.1' : owner.host
    base = `http://${host}:${owner.httpPort}`
  }
  if (base) {
    const url = `${base}/admin/rpc`
    const token = await new Tokens(cfg).sign({ sub: 'cli', role: 'admin', ttl: 60 })
    return fn(async (req) => {
      const res = await fetch(url, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(rpcSchema.parse(req)),
      })
      const body = (await res.json()) as { error?: string }
      if (!res.ok) throw new Error(body.error ?? `broker answered HTTP ${res.status}`)
      return body
    })
  }
  const db = cfg.databaseUrl ? openPostgres(cfg.databaseUrl, 1, log) : await openEmbedded(cfg.dataDir, log)
  try {
    await migrate(db, log)
    const registry = new Registry(db)
    // Privacy operations derive pseudonyms and encrypt names here, with this process's keys (checked against the
    // database's key fingerprints, so a CLI holding another key is refused rather than writing unlinkable ids).
    const audit = logAuditSink(log)
    let privacy: Promise<PrivacyServices> | null = null
    const services = () => {
      privacy ??= openPrivacyServices(cfg, db, { audit, log })
      return privacy
    }
    // Offline erasure: the database alone, and the leaderboards too when they live in Redis.
    let redis: RedisLeaderboard | null = null
    const erase = (userId: string, actor: AuditActor) => {
      redis ??= cfg.redisUrl ? new RedisLeaderboard(cfg.redisUrl) : null
      return eraseUser(db, userId, { audit, actor, log, ...(redis ? { leaderboard: redis } : {}) })
    }
    try {
      return await fn((req) =>
        runRpc(registry, req, { services, source: 'cli', actor: { role: 'cli', id: null }, erase }),
      )
    } finally {
      await (redis as RedisLeaderboard | null)?.close()
    }
  } finally {
    await db.close()
  }
}

// One way to build the cluster's Redis connections, so a plain URL and Sentinel behave the same everywhere
// (emitter, sessions, leases, forwarding). Connections passed to the Redis packages need their own settings:
// mqemitter-redis forces auto-pipelining only on connections it creates itself (scale-out.md §3).
import { Redis, type RedisOptions } from 'ioredis'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'

export function sentinelsOf(spec: string | undefined): { host: string; port: number }[] | undefined {
  if (!spec) return undefined
  return spec
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => {
      const i = s.lastIndexOf(':')
      return i > 0 ? { host: s.slice(0, i), port: Number(s.slice(i + 1)) } : { host: s, port: 26379 }
    })
}

export function connectRedis(
  url: string,
  cluster: BrokerConfig['cluster'],
  log: Logger,
  role: string,
  extra: RedisOptions = {},
): Redis {
  const sentinels = sentinelsOf(cluster.sentinels)
  const opts: RedisOptions = {
    enableAutoPipelining: true,
    // Commands wait through a short blip rather than failing at once; the persistence has no retry of its own.
    maxRetriesPerRequest: 20,
    // Nothing connects until first used: a start that fails before Aedes is up leaves no socket open.
    lazyConnect: true,
    ...(sentinels ? { sentinels, name: cluster.sentinelName ?? 'mymaster' } : {}),
    ...extra,
  }
  const conn = new Redis(url, opts)
  // Without a listener ioredis reports "Unhandled error event"; the cause is logged once per state change.
  let lastErr = ''
  conn.on('error', (err: Error) => {
    if (err.message === lastErr) return
    lastErr = err.message
    log.warn({ err: err.message, role }, 'redis connection error')
  })
  conn.on('ready', () => {
    lastErr = ''
  })
  return conn
}

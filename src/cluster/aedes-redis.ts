// The Redis half of Aedes in cluster mode: mqemitter-redis routes every PUBLISH between the nodes (channels under
// the deployment's prefix), aedes-persistence-redis keeps persistent sessions, offline queues and retained messages
// (keys under the same prefix, in their own db). Readings never reach either: ConsumedRouting drops them before
// Aedes routes them (src/hooks/consumed-routing.ts), so they cost no Redis operation.
import persistenceRedis from 'aedes-persistence-redis'
import type { Redis } from 'ioredis'
import MQEmitterRedis from 'mqemitter-redis'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import { removableQueues } from './queued.js'
import { connectRedis } from './redis-conn.js'
import { applySubscribeFix, keepWillsLocal } from './subscribe-fix.js'

/** Aedes' mq and persistence options; opaque here, Aedes checks them itself */
export interface AedesRedisParts {
  mq: NonNullable<import('aedes').AedesOptions['mq']>
  persistence: NonNullable<import('aedes').AedesOptions['persistence']>
  /** the persistence's own connection (the janitor reads last-seen marks through it) */
  sessionsConn: Redis
  close(): Promise<void>
}

type PrefixCtor = new (
  prefix: string,
  opts: MQEmitterRedis.MQEmitterOptions,
) => AedesRedisParts['mq'] & {
  state: { on(ev: 'error', fn: (err: Error) => void): void }
  close(cb: () => void): void
}

export function channelPrefix(prefix: string): string {
  return `${prefix}/`
}

export function openAedesRedis(url: string, cfg: BrokerConfig['cluster'], log: Logger): AedesRedisParts {
  const pubConn = connectRedis(url, cfg, log, 'mq-pub')
  const subConn = connectRedis(url, cfg, log, 'mq-sub')
  // mqemitter-redis types its Prefix variant nowhere; it is the same constructor with a channel prefix first.
  const Prefixed = (MQEmitterRedis as unknown as { MQEmitterRedisPrefix: PrefixCtor }).MQEmitterRedisPrefix
  const mq = new Prefixed(channelPrefix(cfg.prefix), { pubConn, subConn })
  mq.state.on('error', (err: Error) => log.warn({ err: err.message }, 'redis emitter error'))

  const sessionsConn = connectRedis(url, cfg, log, 'sessions', { db: cfg.redisDb, keyPrefix: `${cfg.prefix}:s:` })
  const ttl = cfg.packetTtlS
  const persistence = persistenceRedis({
    conn: sessionsConn,
    maxSessionDelivery: 1000,
    // Queued outputs (alerts for an offline app) expire; the retained state (live, boards) never does.
    packetTTL: () => ttl,
  }) as AedesRedisParts['persistence'] & Parameters<typeof applySubscribeFix>[0] & Parameters<typeof keepWillsLocal>[0]
  applySubscribeFix(persistence)
  keepWillsLocal(persistence)
  removableQueues(persistence as unknown as Parameters<typeof removableQueues>[0], sessionsConn)

  return {
    mq,
    persistence,
    sessionsConn,
    // Aedes' close() destroys the persistence (its connection) and closes the mq (its two connections).
    async close() {
      for (const c of [pubConn, subConn, sessionsConn]) if (c.status !== 'end') c.disconnect()
    },
  }
}

// Cluster-mode configuration: refused on the embedded store, off without Redis, Sentinel lists parsed, prefixes
// limited to what is safe in Redis channel and key names.
import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../../broker.config.js'
import { openCluster } from '../../src/cluster/index.js'
import { sentinelsOf } from '../../src/cluster/redis-conn.js'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'

const log = createLogger('silent')

describe('cluster configuration', () => {
  it('is off without Redis', () => {
    expect(openCluster(loadConfig({}, {}), log, createMetrics())).toBeNull()
  })

  it('refuses Redis on the embedded store with a clear error', () => {
    const cfg = loadConfig({}, { PULSEGATE_REDIS_URL: 'redis://127.0.0.1:6379' })
    expect(() => openCluster(cfg, log, createMetrics())).toThrow(ConfigError)
    expect(() => openCluster(cfg, log, createMetrics())).toThrow(/needs a server database \(PULSEGATE_DATABASE_URL\)/)
  })

  it('takes the prefix, node name and Sentinel settings from the environment', () => {
    const cfg = loadConfig(
      {},
      {
        PULSEGATE_CLUSTER_PREFIX: 'prod-eu',
        PULSEGATE_NODE_NAME: 'node-a',
        PULSEGATE_REDIS_SENTINELS: 's1:26379, s2:26380,s3',
        PULSEGATE_REDIS_SENTINEL_NAME: 'pg',
      },
    )
    expect(cfg.cluster).toMatchObject({ prefix: 'prod-eu', sentinelName: 'pg' })
    expect(cfg.node.name).toBe('node-a')
    expect(sentinelsOf(cfg.cluster.sentinels)).toEqual([
      { host: 's1', port: 26379 },
      { host: 's2', port: 26380 },
      { host: 's3', port: 26379 },
    ])
  })

  it('refuses a prefix that would change the meaning of Redis channel patterns', () => {
    expect(() => loadConfig({}, { PULSEGATE_CLUSTER_PREFIX: 'a*b' })).toThrow(
      /cluster\.prefix \(PULSEGATE_CLUSTER_PREFIX\)/,
    )
  })
})

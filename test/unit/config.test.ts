// Configuration: defaults, env overrides, and a clear message naming each wrong field and its variable.
import { describe, expect, it } from 'vitest'
import { ConfigError, defaults, ephemeralConfig, loadConfig } from '../../broker.config.js'

describe('broker.config.ts', () => {
  it('defaults match SPEC.md', () => {
    const c = loadConfig({}, {})
    expect([c.mqttPort, c.mqttsPort, c.httpPort, c.host, c.logLevel]).toEqual([1883, 8883, 8080, '0.0.0.0', 'info'])
    expect(c.databaseUrl).toBeUndefined()
    expect(c.dataDir.endsWith('/data')).toBe(true)
    expect(defaults().ingest.lateWindowMs).toBe(7 * 24 * 3600_000)
  })

  it('PULSEGATE_* variables override defaults; empty ones count as unset', () => {
    const c = loadConfig(
      {},
      {
        PULSEGATE_MQTT_PORT: '1884',
        PULSEGATE_DATABASE_URL: 'postgres://x@h/db',
        PULSEGATE_LOG_LEVEL: 'debug',
        PULSEGATE_HOST: '',
      },
    )
    expect(c.mqttPort).toBe(1884)
    expect(c.databaseUrl).toBe('postgres://x@h/db')
    expect(c.logLevel).toBe('debug')
    expect(c.host).toBe('0.0.0.0')
  })

  it('webhook: an https URL with a secret from the environment; http, or a URL without a secret, refused', () => {
    const secret = 'w'.repeat(32)
    const c = loadConfig(
      {},
      {
        PULSEGATE_WEBHOOK_URL: 'https://push.example/hook',
        PULSEGATE_WEBHOOK_SECRET: secret,
        PULSEGATE_WEBHOOK_MAX_ATTEMPTS: '3',
      },
    )
    expect(c.webhook).toMatchObject({ url: 'https://push.example/hook', secret, maxAttempts: 3, recommendations: true })
    expect(loadConfig({}, {}).webhook.url).toBeUndefined()
    expect(() => loadConfig({}, { PULSEGATE_WEBHOOK_URL: 'https://push.example/hook' })).toThrow(
      /webhook\.secret \(PULSEGATE_WEBHOOK_SECRET\)/,
    )
    expect(() =>
      loadConfig({}, { PULSEGATE_WEBHOOK_URL: 'http://push.example/hook', PULSEGATE_WEBHOOK_SECRET: secret }),
    ).toThrow(/webhook\.url \(PULSEGATE_WEBHOOK_URL\): an https:\/\/ URL/)
  })

  it('the token TLS listener is off by default, on by PULSEGATE_MQTTS_TOKEN_ENABLED', () => {
    expect([loadConfig({}, {}).mqttsTokenEnabled, loadConfig({}, {}).mqttsTokenPort]).toEqual([false, 8884])
    const c = loadConfig({}, { PULSEGATE_MQTTS_TOKEN_ENABLED: 'true', PULSEGATE_MQTTS_TOKEN_PORT: '9884' })
    expect([c.mqttsTokenEnabled, c.mqttsTokenPort]).toEqual([true, 9884])
  })

  it('names every wrong field with its variable', () => {
    let err: unknown
    try {
      loadConfig({}, { PULSEGATE_MQTT_PORT: 'eighteen', PULSEGATE_LOG_LEVEL: 'loud', PULSEGATE_REDIS_URL: 'not a url' })
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(ConfigError)
    const msg = (err as Error).message
    expect(msg).toMatch(/mqttPort \(PULSEGATE_MQTT_PORT\)/)
    expect(msg).toMatch(/logLevel \(PULSEGATE_LOG_LEVEL\)/)
    expect(msg).toMatch(/redisUrl \(PULSEGATE_REDIS_URL\)/)
    expect((err as ConfigError).problems).toHaveLength(3)
  })

  it('dp settings: defaults of issue #12, env overrides, ε with at most 6 decimals', () => {
    expect(defaults().dp).toMatchObject({
      epsilonPerRelease: 0.5,
      budgetPerDay: 10,
      intervalMs: 30_000,
      suppressBelow: 10,
    })
    const c = loadConfig(
      {},
      { PULSEGATE_DP_EPSILON: '0.25', PULSEGATE_DP_BUDGET_PER_DAY: '4', PULSEGATE_DP_ENABLED: 'false' },
    )
    expect([c.dp.epsilonPerRelease, c.dp.budgetPerDay, c.dp.enabled]).toEqual([0.25, 4, false])
    expect(() => loadConfig({}, { PULSEGATE_DP_EPSILON: '0.0000001' })).toThrow(
      /dp.epsilonPerRelease \(PULSEGATE_DP_EPSILON\)/,
    )
    expect(() => loadConfig({}, { PULSEGATE_DP_EPSILON: '0' })).toThrow(/PULSEGATE_DP_EPSILON/)
  })

  it('database lanes (issue #16): identity waits less than the CONNACK timeout, every lane overridable by env', () => {
    const d = loadConfig({}, {})
    expect(d.databaseLanes.identity.waitMs).toBeLessThan(d.limits.maxHandshakeWaitMs)
    expect(d.databaseLanes.sync.waitMs).toBe(30_000)
    const lanes = ['commit', 'identity', 'outputs', 'sync', 'background'] as const
    const env = Object.fromEntries(
      lanes.flatMap((l, i) => [
        [`PULSEGATE_DB_LANE_${l.toUpperCase()}_QUEUE`, String(10 + i)],
        [`PULSEGATE_DB_LANE_${l.toUpperCase()}_WAIT_MS`, String(100 + i)],
      ]),
    )
    const c = loadConfig({}, env)
    expect(lanes.map((l) => [c.databaseLanes[l].queue, c.databaseLanes[l].waitMs])).toEqual(
      lanes.map((_, i) => [10 + i, 100 + i]),
    )
    expect(() => loadConfig({}, { PULSEGATE_DB_LANE_IDENTITY_WAIT_MS: '0' })).toThrow(
      /databaseLanes\.identity\.waitMs \(PULSEGATE_DB_LANE_IDENTITY_WAIT_MS\)/,
    )
  })

  it('port 0 is allowed (picks a free port); out-of-range is not', () => {
    expect(loadConfig({}, { PULSEGATE_HTTP_PORT: '0' }).httpPort).toBe(0)
    expect(() => loadConfig({}, { PULSEGATE_HTTP_PORT: '70000' })).toThrow(/httpPort/)
  })

  it('ephemeralConfig: loopback, OS-chosen ports, no signal handlers, PULSEGATE_* ignored, overrides win', () => {
    const saved = process.env.PULSEGATE_MQTTS_PORT
    process.env.PULSEGATE_MQTTS_PORT = '8884'
    try {
      const base = { dataDir: '/tmp/x', logLevel: 'silent' as const, jwtSecret: 'secret-0123456789abcdef' }
      const c = ephemeralConfig(base)
      expect([c.host, c.mqttPort, c.mqttsPort, c.httpPort, c.shutdownSignals]).toEqual(['127.0.0.1', 0, 0, 0, false])
      expect([c.dataDir, c.logLevel, c.jwt.secret, c.jwt.issuer, c.databaseUrl]).toEqual([
        '/tmp/x',
        'silent',
        'secret-0123456789abcdef',
        'pulsegate',
        undefined,
      ])
      const o = ephemeralConfig(
        { ...base, databaseUrl: 'postgres://x@h/db' },
        { httpPort: 8081, ingest: { writers: 1 } },
      )
      expect([o.databaseUrl, o.httpPort, o.ingest.writers, o.ingest.maxBatchRows]).toEqual([
        'postgres://x@h/db',
        8081,
        1,
        defaults().ingest.maxBatchRows,
      ])
    } finally {
      if (saved === undefined) delete process.env.PULSEGATE_MQTTS_PORT
      else process.env.PULSEGATE_MQTTS_PORT = saved
    }
  })
})

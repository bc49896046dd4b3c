// Every pulsegate setting, with its default, in one typed place. Environment variables (PULSEGATE_*) override the
// defaults; `loadConfig` validates the result and names each wrong field, so a typo fails at start, not at 3 a.m.
import path from 'node:path'
import { z } from 'zod'

const port = z.coerce.number().int().min(0).max(65535)
const ms = z.coerce.number().int().min(0)
/** a positive decimal with at most 6 decimals (ε budgets are exact micro-ε; see src/insights/dp/epsilon.ts) */
const epsilon = z.coerce
  .number()
  .positive()
  .max(1000)
  .refine((v) => /^\d+(\.\d{1,6})?$/.test(String(v)), 'at most 6 decimals')
const bool = z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')])

export const configSchema = z.object({
  /** embedded database, dev PKI, JWT dev secret, caches */
  dataDir: z.string().min(1),
  /** PostgreSQL/TimescaleDB server; unset → embedded TimescaleDB (PGlite) under dataDir/db */
  databaseUrl: z.string().url().optional(),
  /** connections in the pg pool for registry look-ups and outputs (the writer has its own, ingest.writers) */
  databasePoolSize: z.coerce.number().int().min(1).max(64),
  /** Redis (leaderboards); unset → in-process */
  redisUrl: z.string().url().optional(),
  host: z.string().min(1),
  mqttPort: port,
  mqttsPort: port,
  httpPort: port,
  /** set false to skip a listener */
  mqttEnabled: bool,
  mqttsEnabled: bool,
  tls: z.object({
    /** PEM paths; unset → the dev PKI in dataDir/pki (created on first start) */
    caFile: z.string().optional(),
    certFile: z.string().optional(),
    keyFile: z.string().optional(),
    /** serve the WebSocket listener as WSS with the same server certificate */
    wss: bool,
  }),
  jwt: z.object({
    /** HS256 secret; unset (and no JWKS URL) → a dev secret generated into dataDir/jwt.secret */
    secret: z.string().min(16).optional(),
    jwksUrl: z.string().url().optional(),
    issuer: z.string().min(1),
    audience: z.string().min(1),
  }),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
  limits: z.object({
    /** largest MQTT packet accepted; cut off at the fixed header, before the body is buffered */
    maxPacketBytes: z.coerce
      .number()
      .int()
      .min(1024)
      .max(256 * 1024 * 1024),
    /** ids in topics and client ids: [A-Za-z0-9_-]{1,64}; client ids of token clients may add ':' parts */
    maxClientIdLength: z.coerce.number().int().min(8).max(256),
    connectTimeoutMs: ms,
    /** a client whose socket does not drain for this long is disconnected (Aedes drainTimeout) */
    drainTimeoutMs: ms,
    /** grace period for in-flight commits on SIGTERM */
    shutdownTimeoutMs: ms,
  }),
  ingest: z.object({
    /** rows per INSERT statement at most */
    maxBatchRows: z.coerce.number().int().min(1).max(100_000),
    /** how long the first queued row waits for company before a flush */
    flushIntervalMs: z.coerce.number().min(0).max(1000),
    /** rows waiting for the database, across all devices; above it QoS 1 is refused (device retries) and QoS 0 dropped */
    maxQueuedRows: z.coerce.number().int().min(100),
    /** statements in flight at once (pg pool); the embedded store always uses 1 */
    writers: z.coerce.number().int().min(1).max(32),
    /** a QoS 1 batch not committed by then is refused: the device reconnects and retries (idempotent) */
    commitTimeoutMs: ms,
    maxSamplesPerBatch: z.coerce.number().int().min(1).max(100_000),
    maxFutureSkewMs: ms,
    /** samples older than this are refused; compression starts after it so late rows never hit compressed chunks */
    lateWindowMs: ms,
    maxFootSpeedMps: z.coerce.number().positive(),
    /** at most one dead-letter row per device per interval: a device stuck sending garbage is counted, not stored 10×/s */
    deadLetterIntervalMs: ms,
  }),
  privacy: z.object({
    /** HMAC-SHA256 key (≥ 32 bytes, hex or base64) deriving pseudonymous user ids from external account ids; unset →
     *  a key file generated into dataDir/keys/pseudonym.key. Never stored in the database. */
    pseudonymKey: z.string().min(32).optional(),
    /** AES-256-GCM key (32 bytes, hex or base64) for names and e-mails in `people`; unset → dataDir/keys/people.key */
    peopleKey: z.string().min(32).optional(),
    /** Ed25519 private key (PEM file) signing audit checkpoints; unset → dataDir/keys/audit-ed25519.pem */
    auditKeyFile: z.string().optional(),
    /** a signed checkpoint of the audit chain's head every so often (a broker writes them; 0 = only on demand) */
    auditCheckpointMs: ms,
  }),
  preferences: z.object({
    /** an edit whose HLC wall time is further ahead of the server's clock is refused: a device with a clock set to
     *  next year must not win its fields until next year */
    maxClockAheadMs: ms,
  }),
  /** differentially private statistics on events/{eid}/stats and `pulsegate stats` (src/insights/dp/) */
  dp: z.object({
    enabled: bool,
    /** ε of one release (split over its histograms), at most 6 decimals: kept exact, never a float, in the ledger */
    epsilonPerRelease: epsilon,
    /** ε an event may spend per UTC day, broker and operator releases together; then releases stop */
    budgetPerDay: epsilon,
    /** how often the broker releases for each event under way */
    intervalMs: z.coerce.number().int().min(100),
    /** cells whose noisy count is below this are withheld (post-processing: costs no privacy) */
    suppressBelow: z.coerce.number().int().min(0),
    /** an event is under way from starts_at for this long */
    eventWindowMs: ms,
  }),
  /** personalised recommendations on users/{uid}/recommendations (src/insights/; docs/insights.md) */
  insights: z.object({
    enabled: bool,
    /** how often the broker looks for users whose night has closed in their time zone */
    tickMs: z.coerce.number().int().min(100),
    /** daily rules run at this local time (HH:MM) or later, once the night 00:00–07:00 has closed */
    dailyAt: z.string().regex(/^(?:[01]\d|2[0-3]):[0-5]\d$/),
    /** each user's daily run is offset by a fixed 0…spreadMinutes−1 minutes (hash of the id), so 1M users do not all
     *  compute at once */
    spreadMinutes: z.coerce.number().int().min(1).max(720),
    /** users evaluated per tick at most (the rest wait for the next tick) */
    maxUsersPerTick: z.coerce.number().int().min(1).max(1_000_000),
    /** non-safety recommendations per user and local day */
    dailyBudget: z.coerce.number().int().min(0).max(50),
    /** a 1-min HR row counts as valid with at least this many samples (30 at 1 Hz; tests with 1/min use 1) */
    minSamplesPerMinute: z.coerce.number().int().min(1).max(60),
    /** move reminders: local active hours (HH:MM–HH:MM; the first hour is skipped) */
    activeStart: z.string().regex(/^(?:[01]\d|2[0-3]):[0-5]\d$/),
    activeEnd: z.string().regex(/^(?:[01]\d|2[0-3]):[0-5]\d$/),
    /** days of history computed the first time a user is evaluated */
    historyDays: z.coerce.number().int().min(1).max(400),
  }),
  shutdownSignals: bool,
})

export type BrokerConfig = z.infer<typeof configSchema>

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] }

export function defaults(): BrokerConfig {
  return {
    dataDir: path.resolve('data'),
    databaseUrl: undefined,
    databasePoolSize: 8,
    redisUrl: undefined,
    host: '0.0.0.0',
    mqttPort: 1883,
    mqttsPort: 8883,
    httpPort: 8080,
    mqttEnabled: true,
    mqttsEnabled: true,
    tls: { caFile: undefined, certFile: undefined, keyFile: undefined, wss: false },
    jwt: { secret: undefined, jwksUrl: undefined, issuer: 'pulsegate', audience: 'pulsegate' },
    logLevel: 'info',
    limits: {
      maxPacketBytes: 256 * 1024,
      maxClientIdLength: 160,
      connectTimeoutMs: 10_000,
      drainTimeoutMs: 20_000,
      shutdownTimeoutMs: 15_000,
    },
    ingest: {
      maxBatchRows: 20_000,
      flushIntervalMs: 4,
      maxQueuedRows: 500_000,
      writers: 3,
      commitTimeoutMs: 20_000,
      maxSamplesPerBatch: 2_000,
      maxFutureSkewMs: 5 * 60_000,
      lateWindowMs: 7 * 24 * 3600_000,
      maxFootSpeedMps: 12.5,
      deadLetterIntervalMs: 10_000,
    },
    privacy: {
      pseudonymKey: undefined,
      peopleKey: undefined,
      auditKeyFile: undefined,
      auditCheckpointMs: 5 * 60_000,
    },
    preferences: { maxClockAheadMs: 3600_000 },
    dp: {
      enabled: true,
      epsilonPerRelease: 0.5,
      budgetPerDay: 10,
      intervalMs: 30_000,
      suppressBelow: 10,
      eventWindowMs: 8 * 3600_000,
    },
    insights: {
      enabled: true,
      tickMs: 60_000,
      dailyAt: '07:30',
      spreadMinutes: 120,
      maxUsersPerTick: 20_000,
      dailyBudget: 3,
      minSamplesPerMinute: 30,
      activeStart: '09:00',
      activeEnd: '18:00',
      historyDays: 35,
    },
    shutdownSignals: true,
  }
}

/** env variable → config path. The documented ones first (SPEC.md), then the tuning knobs. */
export const ENV_MAP: Record<string, string> = {
  PULSEGATE_DATA_DIR: 'dataDir',
  PULSEGATE_DATABASE_URL: 'databaseUrl',
  PULSEGATE_DATABASE_POOL_SIZE: 'databasePoolSize',
  PULSEGATE_REDIS_URL: 'redisUrl',
  PULSEGATE_HOST: 'host',
  PULSEGATE_MQTT_PORT: 'mqttPort',
  PULSEGATE_MQTTS_PORT: 'mqttsPort',
  PULSEGATE_HTTP_PORT: 'httpPort',
  PULSEGATE_MQTT_ENABLED: 'mqttEnabled',
  PULSEGATE_MQTTS_ENABLED: 'mqttsEnabled',
  PULSEGATE_TLS_CA_FILE: 'tls.caFile',
  PULSEGATE_TLS_CERT_FILE: 'tls.certFile',
  PULSEGATE_TLS_KEY_FILE: 'tls.keyFile',
  PULSEGATE_TLS_WSS: 'tls.wss',
  PULSEGATE_JWT_SECRET: 'jwt.secret',
  PULSEGATE_JWKS_URL: 'jwt.jwksUrl',
  PULSEGATE_JWT_ISSUER: 'jwt.issuer',
  PULSEGATE_JWT_AUDIENCE: 'jwt.audience',
  PULSEGATE_LOG_LEVEL: 'logLevel',
  PULSEGATE_PSEUDONYM_KEY: 'privacy.pseudonymKey',
  PULSEGATE_PEOPLE_KEY: 'privacy.peopleKey',
  PULSEGATE_AUDIT_KEY_FILE: 'privacy.auditKeyFile',
  PULSEGATE_AUDIT_CHECKPOINT_MS: 'privacy.auditCheckpointMs',
  PULSEGATE_MAX_PACKET_BYTES: 'limits.maxPacketBytes',
  PULSEGATE_INGEST_MAX_BATCH_ROWS: 'ingest.maxBatchRows',
  PULSEGATE_INGEST_FLUSH_MS: 'ingest.flushIntervalMs',
  PULSEGATE_INGEST_MAX_QUEUED_ROWS: 'ingest.maxQueuedRows',
  PULSEGATE_INGEST_WRITERS: 'ingest.writers',
  PULSEGATE_INGEST_COMMIT_TIMEOUT_MS: 'ingest.commitTimeoutMs',
  PULSEGATE_LATE_WINDOW_MS: 'ingest.lateWindowMs',
  PULSEGATE_PREFERENCES_MAX_CLOCK_AHEAD_MS: 'preferences.maxClockAheadMs',
  PULSEGATE_DP_ENABLED: 'dp.enabled',
  PULSEGATE_DP_EPSILON: 'dp.epsilonPerRelease',
  PULSEGATE_DP_BUDGET_PER_DAY: 'dp.budgetPerDay',
  PULSEGATE_DP_INTERVAL_MS: 'dp.intervalMs',
  PULSEGATE_DP_SUPPRESS_BELOW: 'dp.suppressBelow',
  PULSEGATE_DP_EVENT_WINDOW_MS: 'dp.eventWindowMs',
  PULSEGATE_INSIGHTS_ENABLED: 'insights.enabled',
  PULSEGATE_INSIGHTS_TICK_MS: 'insights.tickMs',
  PULSEGATE_INSIGHTS_DAILY_AT: 'insights.dailyAt',
  PULSEGATE_INSIGHTS_SPREAD_MINUTES: 'insights.spreadMinutes',
  PULSEGATE_INSIGHTS_DAILY_BUDGET: 'insights.dailyBudget',
  PULSEGATE_INSIGHTS_MIN_SAMPLES_PER_MINUTE: 'insights.minSamplesPerMinute',
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration:\n  ${problems.join('\n  ')}`)
  }
}

function setPath(target: Record<string, unknown>, dotted: string, value: unknown): void {
  const keys = dotted.split('.')
  let node = target
  for (const key of keys.slice(0, -1)) {
    const next = node[key]
    if (typeof next !== 'object' || next === null) node[key] = {}
    node = node[key] as Record<string, unknown>
  }
  node[keys[keys.length - 1] as string] = value
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue
    const b = out[k]
    out[k] =
      typeof v === 'object' && v !== null && !Array.isArray(v) && typeof b === 'object' && b !== null
        ? merge(b as Record<string, unknown>, v as Record<string, unknown>)
        : v
  }
  return out
}

/**
 * Settings of a pulsegate started inside another process — the test harness (test/helpers/harness.ts) and the
 * benchmarks (bench/lib/broker.ts) — that owns nothing shared on the machine: loopback only, every port chosen by the
 * OS (read back from `Pulsegate.ports`), no signal handlers (the host process stops it), PULSEGATE_* ignored.
 * `overrides` replace whole top-level fields, as in loadConfig. It lives here, beside loadConfig, because it is
 * configuration and both need it: bench/ cannot import test/ (which is not built), a test harness importing a
 * benchmark module would tie the suite to the load generators, and src/ stays free of it.
 */
export function ephemeralConfig(
  base: { dataDir: string; databaseUrl?: string | null; logLevel: BrokerConfig['logLevel']; jwtSecret: string },
  overrides: DeepPartial<BrokerConfig> = {},
): BrokerConfig {
  return loadConfig(
    {
      dataDir: base.dataDir,
      ...(base.databaseUrl ? { databaseUrl: base.databaseUrl } : {}),
      host: '127.0.0.1',
      mqttPort: 0,
      mqttsPort: 0,
      httpPort: 0,
      logLevel: base.logLevel,
      jwt: { secret: base.jwtSecret },
      shutdownSignals: false,
      ...overrides,
    },
    {},
  )
}

/** defaults ← env ← overrides (tests and the CLI pass overrides). Empty env values count as unset. */
export function loadConfig(
  overrides: DeepPartial<BrokerConfig> = {},
  env: NodeJS.ProcessEnv = process.env,
): BrokerConfig {
  const fromEnv: Record<string, unknown> = {}
  for (const [name, dotted] of Object.entries(ENV_MAP)) {
    const v = env[name]
    if (v !== undefined && v !== '') setPath(fromEnv, dotted, v)
  }
  const merged = merge(merge(defaults() as unknown as Record<string, unknown>, fromEnv), overrides)
  const parsed = configSchema.safeParse(merged)
  if (!parsed.success) {
    const envFor = (p: string) => Object.entries(ENV_MAP).find(([, d]) => d === p)?.[0]
    throw new ConfigError(
      parsed.error.issues.map((i) => {
        const p = i.path.join('.')
        const e = envFor(p)
        return `${p}${e ? ` (${e})` : ''}: ${i.message}`
      }),
    )
  }
  const cfg = parsed.data
  cfg.dataDir = path.resolve(cfg.dataDir)
  return cfg
}

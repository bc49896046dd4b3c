// Every pulsegate setting, with its default, in one typed place. Environment variables (PULSEGATE_*) override the
// defaults; `loadConfig` validates the result and names each wrong field, so a typo fails at start, not at 3 a.m.
import net from 'node:net'
import os from 'node:os'
import { randomBytes } from 'node:crypto'
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
const proxyMode = z.enum(['off', 'optional', 'required'])
/** an IPv4/IPv6 address or CIDR; a comma-separated list from the environment */
const cidr = z.string().refine((v) => {
  const [addr = '', bits, extra] = v.split('/')
  const ver = net.isIP(addr)
  if (!ver || extra !== undefined) return false
  return bits === undefined || (/^\d{1,3}$/.test(bits) && Number(bits) <= (ver === 4 ? 32 : 128))
}, 'an IP address or CIDR')
const cidrList = z.preprocess(
  (v) =>
    typeof v === 'string'
      ? v
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : v,
  z.array(cidr),
)
/** a token bucket: sustained rate per second and the burst it may save up (0 = no limit) */
const bucket = z.object({
  messagesPerSec: z.coerce.number().min(0),
  messageBurst: z.coerce.number().int().min(1),
  bytesPerSec: z.coerce.number().min(0),
  byteBurst: z.coerce.number().int().min(1),
})
/** a database lane's bounds (src/store/lanes.ts): statements waiting at most, and how long one may wait */
const lane = z.object({ queue: z.coerce.number().int().min(0), waitMs: z.coerce.number().int().min(1) })
const bool = z.union([z.boolean(), z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1')])
/** brownout thresholds: mean commit latency (or the oldest waiting batch's age) and rows queued for the database */
const pressure = z.object({
  commitLatencyMs: z.coerce.number().int().min(1),
  queueRows: z.coerce.number().int().min(1),
  forMs: ms,
})

export const configSchema = z
  .object({
    /** embedded database, dev PKI, JWT dev secret, caches */
    dataDir: z.string().min(1),
    /** PostgreSQL/TimescaleDB server; unset → embedded TimescaleDB (PGlite) under dataDir/db */
    databaseUrl: z.string().url().optional(),
    /** connections in the pg pool for registry look-ups and outputs (the writer has its own, ingest.writers) */
    databasePoolSize: z.coerce.number().int().min(1).max(64),
    /** the admission lanes in front of the pool (docs/limits.md "Database lanes"): at most the pool size run at once,
     *  the rest wait in their lane, the highest priority first; over a lane's bound a request fails as "unavailable" */
    databaseLanes: z.object({
      /** the group commit (PUBACKs wait on it); already bounded by ingest.maxQueuedRows, so long and deep */
      commit: lane,
      /** registry look-ups for CONNECT and publish authorization: waitMs below the devices' CONNACK timeout */
      identity: lane,
      /** outputs (leaderboards, alerts, webhooks) and device-side writes (status, dead letters) */
      outputs: lane,
      /** app sync requests */
      sync: lane,
      /** everything else: insights, DP, ops, HTTP/console, audit, maintenance */
      background: lane,
    }),
    /** the embedded store runs PGlite on its own worker thread (off the broker's event loop) or, 'main', in it */
    embeddedThread: z.enum(['worker', 'main']),
    /** Redis (leaderboards; with a server database also cluster mode, src/cluster/); unset → in-process, one node */
    redisUrl: z.string().url().optional(),
    /** cluster mode (docs/cluster.md): used only when redisUrl and databaseUrl are both set */
    cluster: z.object({
      /** namespace of this deployment's Redis channels and keys: two deployments (or test runs) on one Redis never
       *  see each other's messages, sessions or leases (Redis pub/sub ignores the db number) */
      prefix: z
        .string()
        .regex(/^[A-Za-z0-9_-]{1,64}$/, 'letters, digits, _ and - only (it prefixes Redis channels and keys)'),
      /** Redis db of the sessions (aedes-persistence-redis keys); the channels are prefixed, not numbered */
      redisDb: z.coerce.number().int().min(0).max(15),
      /** Redis Sentinel: "host:port,host:port" and the monitored master's name; then redisUrl gives only auth/db */
      sentinels: z.string().optional(),
      sentinelName: z.string().optional(),
      /** how long a queued QoS 1 output (an alert for an offline app) is kept in Redis */
      packetTtlS: z.coerce.number().int().min(0),
      /** a node owns a user's output state (and one node the leaderboards) for this long unless it renews */
      leaseMs: z.coerce.number().int().min(1000),
      /** persistent sessions not seen for this long are removed by the janitor (0 = never) */
      sessionIdleMs: ms,
      /** how often the janitor looks (one node at a time) */
      janitorIntervalMs: z.coerce.number().int().min(1000),
      /** Aedes heartbeat: how soon the others notice a dead node */
      heartbeatMs: z.coerce.number().int().min(100),
    }),
    host: z.string().min(1),
    mqttPort: port,
    mqttsPort: port,
    httpPort: port,
    /** MQTT/TLS for token clients (phone bridges, apps): a client certificate is optional there, but one presented must
     *  verify; without one the JWT in the password decides (docs/contract.md "Connections") */
    mqttsTokenPort: port,
    /** set false to skip a listener */
    mqttEnabled: bool,
    mqttsEnabled: bool,
    /** off by default: one more open port is the operator's choice */
    mqttsTokenEnabled: bool,
    tls: z.object({
      /** PEM paths; unset → the dev PKI in dataDir/pki (created on first start) */
      caFile: z.string().optional(),
      certFile: z.string().optional(),
      keyFile: z.string().optional(),
      /** serve the WebSocket listener as WSS with the same server certificate */
      wss: bool,
      /** TLS session tickets on 8883, so a reconnecting device skips the full handshake (src/transport/tls-tickets.ts) */
      resumption: bool,
      /** the ticket key is derived from this; give every node the same one so a device resumes on any node */
      ticketSecret: z.string().min(32).optional(),
      ticketRotationMinutes: z.coerce
        .number()
        .int()
        .min(1)
        .max(7 * 24 * 60),
      /** ticket lifetime told to clients, seconds (RFC 8446 allows up to 7 days) */
      sessionTimeoutS: z.coerce
        .number()
        .int()
        .min(1)
        .max(7 * 24 * 3600),
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
      /** inbound PUBLISH token buckets per role (src/limits, docs/limits.md): QoS 1 over them is slowed, QoS 0 dropped */
      rates: z.object({ device: bucket, bridge: bucket, app: bucket, medic: bucket, admin: bucket }),
      /** a client whose over-limit publishes in one window reach (factor − 1) × its rate × the window is disconnected */
      abuse: z.object({ factor: z.coerce.number().min(1.5), windowMs: z.coerce.number().int().min(100) }),
      /** open MQTT connections per client address (clientAddress in src/limits); 0 = no limit */
      maxConnectionsPerIp: z.coerce.number().int().min(0),
      /** EMQX-style flapping detection, keyed by client id and address: more than maxConnects within windowMs → banned
       *  for banMs (maxConnects 0 = off) */
      flapping: z.object({
        maxConnects: z.coerce.number().int().min(0),
        windowMs: z.coerce.number().int().min(100),
        banMs: z.coerce.number().int().min(0),
      }),
      /** TLS handshakes in progress at once on the mTLS listener; further connections wait, unread, in a queue */
      maxTlsHandshakes: z.coerce.number().int().min(1),
      /** connections waiting for a handshake slot; beyond it they are closed at once (0 = no queue) */
      maxQueuedHandshakes: z.coerce.number().int().min(0),
      /** a connection that waited this long for a slot is closed, not handed to TLS: its device has likely given up
       *  (keep it below the devices' CONNACK timeout); 0 = no bound */
      maxHandshakeWaitMs: z.coerce.number().int().min(0),
      /** slow consumers (src/limits/outbound.ts): bytes waiting for one client before QoS 0 is held back (newest per
       *  topic kept) and before a QoS 1/2 delivery disconnects it; 0 = off */
      outbound: z.object({
        softBytes: z.coerce.number().int().min(0),
        hardBytes: z.coerce.number().int().min(0),
        keepTopics: z.coerce.number().int().min(1).max(10_000),
      }),
      /** load-adaptive edge throttling (src/limits/brownout.ts, docs/limits.md): under database pressure the busiest
       *  devices get a retained devices/{id}/config with a longer batch, restored when the pressure is gone */
      brownout: z
        .object({
          enabled: bool,
          /** how often commit latency and queue depth are sampled */
          sampleMs: z.coerce.number().int().min(50).max(60_000),
          /** enter: commit latency or queued rows above these for forMs */
          enter: pressure,
          /** leave: commit latency and queued rows below these for forMs (hysteresis: below enter's) */
          leave: pressure,
          /** samples per batch asked of a throttled device (the firmware's batchEvery, 1…600) */
          batchEvery: z.coerce.number().int().min(1).max(600),
          /** batchEvery restored to a device that had no config of its own before the brownout */
          normalBatchEvery: z.coerce.number().int().min(1).max(600),
          /** devices throttled at most, the busiest (messages in the last rankWindowMs) first */
          maxDevices: z.coerce.number().int().min(1),
          /** the window messages are counted in to rank devices */
          rankWindowMs: z.coerce.number().int().min(100),
        })
        .refine((b) => b.leave.commitLatencyMs <= b.enter.commitLatencyMs && b.leave.queueRows <= b.enter.queueRows, {
          message: 'leave thresholds must not be above enter thresholds',
          path: ['leave'],
        }),
    }),
    ingest: z.object({
      /** rows per INSERT statement at most */
      maxBatchRows: z.coerce.number().int().min(1).max(100_000),
      /** how long the first queued row waits for company before a flush */
      flushIntervalMs: z.coerce.number().min(0).max(1000),
      /** rows waiting for the database, across all devices; above it QoS 1 is refused (device retries) and QoS 0 dropped */
      maxQueuedRows: z.coerce.number().int().min(100),
      /** statements in flight at once (pg pool); the embedded store uses at most 2 (one running, one queued on its thread) */
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
      /** AES-256-GCM key (32 bytes, hex or base64) wrapping the devices' content keys (encrypted readings) in the
       *  device records; unset → dataDir/keys/device-wrap.key. Never stored in the database. */
      deviceWrapKey: z.string().min(32).optional(),
      /** Ed25519 private key (PEM file) signing audit checkpoints; unset → dataDir/keys/audit-ed25519.pem */
      auditKeyFile: z.string().optional(),
      /** a signed checkpoint of the audit chain's head every so often (a broker writes them; 0 = only on demand) */
      auditCheckpointMs: ms,
    }),
    /** race safety of the outputs (src/outputs) */
    outputs: z.object({
      /** a racing runner whose every device is silent this long (no clean DISCONNECT, not finished) raises a
       *  runner_silent alert with the last known position (0 = off) */
      silentRunnerMs: ms,
      /** distance comes from one GPS source at a time; another device takes over after this much silence */
      gpsSourceSwitchMs: ms,
    }),
    /** public live streams over Server-Sent Events on the HTTP port (/live/…, src/outputs/sse/) */
    live: z.object({
      enabled: bool,
      /** open SSE streams at most (all kinds together); the next gets 503 with Retry-After */
      maxClients: z.coerce.number().int().min(0),
      /** a comment line every so often keeps proxies and load balancers from closing an idle stream */
      heartbeatMs: z.coerce.number().int().min(100),
      /** a stream sends at most one update per this interval (newer states replace a pending one) */
      minIntervalMs: ms,
      /** a client with more than this unsent on its socket is skipped (dropped to the newest state when it drains) */
      maxQueuedBytes: z.coerce.number().int().min(1024),
      /** the reconnection delay suggested to EventSource clients */
      retryMs: ms,
      /** runner streams carry the runner's last position (outside their privacy zones); false: progress only */
      runnerPositions: bool,
    }),
    /** the race-control console at / (src/transport/console-routes.ts) */
    console: z.object({
      /** map tiles, e.g. "https://tile.example.org/{z}/{x}/{y}.png"; unset → no tile layer (works offline) */
      tileUrl: z.string().optional(),
      /** shown under the map when tiles are drawn (the tile provider's licence) */
      tileAttribution: z.string(),
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
    /** push for offline apps (src/outputs/webhook/, docs/outputs.md "Webhooks"): alerts (and recommendations) of users
     *  with no app connected, POSTed signed to the operator's push service, which forwards them to FCM/APNs */
    webhook: z.object({
      /** the push service's HTTPS endpoint; unset → no webhooks */
      url: z
        .string()
        .url()
        .refine((u) => u.startsWith('https://'), 'an https:// URL (the bodies are health data)')
        .optional(),
      /** HMAC-SHA256 key of the X-Pulsegate-Signature header (≥ 32 characters); required with url */
      secret: z.string().min(32).optional(),
      /** PEM CA(s) trusted for the endpoint instead of the public roots (a private CA); unset → Node's roots */
      caFile: z.string().optional(),
      /** one attempt: connect, send, response headers */
      timeoutMs: z.coerce.number().int().min(100),
      /** attempts before a delivery is dead-lettered (a 4xx other than 408/429 dead-letters at once) */
      maxAttempts: z.coerce.number().int().min(1).max(100),
      /** retry n waits about backoffBaseMs·2^(n−1), capped at backoffMaxMs, half of it random (jitter) */
      backoffBaseMs: z.coerce.number().int().min(1),
      backoffMaxMs: z.coerce.number().int().min(1),
      /** requests in flight at once */
      concurrency: z.coerce.number().int().min(1).max(256),
      /** deliveries held in memory; beyond it they wait in the table for the sweep; with this many INSERTs unanswered
       *  (the database far behind) a new push is dropped and counted (dropped_queue_full) */
      maxQueued: z.coerce.number().int().min(10),
      /** also push recommendations (users/{uid}/recommendations) */
      recommendations: bool,
      /** a node's hold on the deliveries it works on; past it (the node died) another node takes them over */
      claimMs: z.coerce.number().int().min(1000),
      /** how often the table is read for deliveries nobody holds (after a restart, a dead node, a full queue) */
      sweepMs: z.coerce.number().int().min(50),
    }),
    /** the control plane (src/cluster/control-plane.ts): LISTEN/NOTIFY on a server database */
    control: z.object({
      /** listen for changes written by other processes; off: they reach this broker when its caches expire */
      listen: bool,
      /** the listener's reconnect backoff stops growing here */
      reconnectMaxMs: z.coerce.number().int().min(100),
    }),
    shutdownSignals: bool,
    /** this process: the `node` label on every metric, in log lines and in cluster leases (default <hostname>-<pid>,
     *  so several nodes on one machine never share a name) */
    node: z.object({ name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . and - only') }),
    /** PROXY protocol from load balancers (docs/load-balancer.md) */
    proxy: z.object({
      /** per listener: off (no header), optional (trusted peers may send one), required (only load balancers) */
      mqtt: proxyMode,
      mqtts: proxyMode,
      http: proxyMode,
      /** the load balancers: the only peers whose PROXY header (client address, TLS identity) is believed */
      trusted: cidrList,
      /** a trusted connection must finish its header within this */
      headerTimeoutMs: ms,
      /** plain MQTT listener: a device is authenticated by the certificate identity the load balancer verified (TLS
       *  terminated there) and passed in PROXY v2 TLVs: CN + SHA-256 fingerprint, checked against the registry */
      tlsIdentity: bool,
    }),
    readiness: z.object({
      /** /readyz turns false once the broker's Redis connection has been down for longer than this */
      redisDownMs: ms,
    }),
  })
  .superRefine((c, ctx) => {
    const used = [c.proxy.mqtt, c.proxy.mqtts, c.proxy.http].some((m) => m !== 'off')
    if (used && c.proxy.trusted.length === 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['proxy', 'trusted'],
        message: 'list the load balancers when a listener accepts PROXY headers',
      })
    }
    if (c.webhook.url && !c.webhook.secret) {
      ctx.addIssue({ code: 'custom', path: ['webhook', 'secret'], message: 'a webhook URL needs a signing secret' })
    }
    if (c.proxy.tlsIdentity && c.proxy.mqtt === 'off') {
      ctx.addIssue({ code: 'custom', path: ['proxy', 'tlsIdentity'], message: 'needs proxy.mqtt optional or required' })
    }
  })

export type BrokerConfig = z.infer<typeof configSchema>

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] }

/** The database lanes' default bounds (src/store/lanes.ts uses them too, for a Db opened without a config). A fresh
 *  object each call: loadConfig writes env overrides into what defaults() returns. */
export function defaultDatabaseLanes(): BrokerConfig['databaseLanes'] {
  return {
    commit: { queue: 10_000, waitMs: 60_000 },
    identity: { queue: 20_000, waitMs: 5_000 },
    outputs: { queue: 10_000, waitMs: 15_000 },
    sync: { queue: 1_000, waitMs: 30_000 },
    background: { queue: 1_000, waitMs: 30_000 },
  }
}

export function defaults(): BrokerConfig {
  return {
    dataDir: path.resolve('data'),
    databaseUrl: undefined,
    databasePoolSize: 8,
    databaseLanes: defaultDatabaseLanes(),
    embeddedThread: 'worker',
    redisUrl: undefined,
    cluster: {
      prefix: 'pulsegate',
      redisDb: 1,
      sentinels: undefined,
      sentinelName: undefined,
      packetTtlS: 24 * 3600,
      leaseMs: 15_000,
      sessionIdleMs: 30 * 24 * 3600_000,
      janitorIntervalMs: 3600_000,
      heartbeatMs: 5000,
    },
    host: '0.0.0.0',
    mqttPort: 1883,
    mqttsPort: 8883,
    httpPort: 8080,
    mqttsTokenPort: 8884,
    mqttEnabled: true,
    mqttsEnabled: true,
    mqttsTokenEnabled: false,
    tls: {
      caFile: undefined,
      certFile: undefined,
      keyFile: undefined,
      wss: false,
      resumption: true,
      ticketSecret: undefined,
      ticketRotationMinutes: 12 * 60,
      sessionTimeoutS: 2 * 3600,
    },
    jwt: { secret: undefined, jwksUrl: undefined, issuer: 'pulsegate', audience: 'pulsegate' },
    logLevel: 'info',
    limits: {
      maxPacketBytes: 256 * 1024,
      maxClientIdLength: 160,
      connectTimeoutMs: 10_000,
      drainTimeoutMs: 20_000,
      shutdownTimeoutMs: 15_000,
      // A tracker sends a batch every second or so and flushes its offline buffer after a reconnect (the bursts).
      rates: {
        device: { messagesPerSec: 50, messageBurst: 200, bytesPerSec: 512 * 1024, byteBurst: 2 * 1024 * 1024 },
        bridge: { messagesPerSec: 200, messageBurst: 1000, bytesPerSec: 2 * 1024 * 1024, byteBurst: 8 * 1024 * 1024 },
        app: { messagesPerSec: 20, messageBurst: 100, bytesPerSec: 256 * 1024, byteBurst: 1024 * 1024 },
        medic: { messagesPerSec: 10, messageBurst: 50, bytesPerSec: 64 * 1024, byteBurst: 256 * 1024 },
        admin: { messagesPerSec: 0, messageBurst: 1, bytesPerSec: 0, byteBurst: 1 },
      },
      abuse: { factor: 10, windowMs: 10_000 },
      // Off by default: trackers on a cellular network share carrier-NAT addresses by the thousand.
      maxConnectionsPerIp: 0,
      // Off by default as in EMQX (flapping_detect.enable = false); EMQX's values once on: 15 per minute, ban 5 min.
      flapping: { maxConnects: 0, windowMs: 60_000, banMs: 5 * 60_000 },
      maxTlsHandshakes: 32,
      maxQueuedHandshakes: 20_000,
      maxHandshakeWaitMs: 8000,
      outbound: { softBytes: 64 * 1024, hardBytes: 256 * 1024, keepTopics: 64 },
      // Off by default: it rewrites device configuration, so an operator turns it on knowing the firmware obeys it.
      brownout: {
        enabled: false,
        sampleMs: 500,
        enter: { commitLatencyMs: 2000, queueRows: 100_000, forMs: 10_000 },
        leave: { commitLatencyMs: 500, queueRows: 20_000, forMs: 30_000 },
        batchEvery: 60,
        normalBatchEvery: 5,
        maxDevices: 20_000,
        rankWindowMs: 10_000,
      },
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
      deviceWrapKey: undefined,
      auditKeyFile: undefined,
      auditCheckpointMs: 5 * 60_000,
    },
    outputs: { silentRunnerMs: 120_000, gpsSourceSwitchMs: 30_000 },
    live: {
      enabled: true,
      maxClients: 10_000,
      heartbeatMs: 15_000,
      minIntervalMs: 1000,
      maxQueuedBytes: 64 * 1024,
      retryMs: 2000,
      runnerPositions: true,
    },
    console: { tileUrl: undefined, tileAttribution: '' },
    preferences: { maxClockAheadMs: 3600_000 },
    dp: {
      enabled: true,
      epsilonPerRelease: 0.5,
      budgetPerDay: 10,
      intervalMs: 30_000,
      suppressBelow: 10,
      eventWindowMs: 8 * 3600_000,
    },
    control: { listen: true, reconnectMaxMs: 5000 },
    webhook: {
      url: undefined,
      secret: undefined,
      caFile: undefined,
      timeoutMs: 5000,
      maxAttempts: 8,
      backoffBaseMs: 1000,
      backoffMaxMs: 5 * 60_000,
      concurrency: 8,
      maxQueued: 10_000,
      recommendations: true,
      claimMs: 60_000,
      sweepMs: 5000,
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
    node: { name: `${os.hostname()}-${process.pid}` },
    proxy: { mqtt: 'off', mqtts: 'off', http: 'off', trusted: [], headerTimeoutMs: 5000, tlsIdentity: false },
    readiness: { redisDownMs: 5000 },
  }
}

/** env variable → config path. The documented ones first (docs/contract.md), then the tuning knobs. */
export const ENV_MAP: Record<string, string> = {
  PULSEGATE_DATA_DIR: 'dataDir',
  PULSEGATE_DATABASE_URL: 'databaseUrl',
  PULSEGATE_DATABASE_POOL_SIZE: 'databasePoolSize',
  PULSEGATE_DB_LANE_COMMIT_QUEUE: 'databaseLanes.commit.queue',
  PULSEGATE_DB_LANE_COMMIT_WAIT_MS: 'databaseLanes.commit.waitMs',
  PULSEGATE_DB_LANE_IDENTITY_QUEUE: 'databaseLanes.identity.queue',
  PULSEGATE_DB_LANE_IDENTITY_WAIT_MS: 'databaseLanes.identity.waitMs',
  PULSEGATE_DB_LANE_OUTPUTS_QUEUE: 'databaseLanes.outputs.queue',
  PULSEGATE_DB_LANE_OUTPUTS_WAIT_MS: 'databaseLanes.outputs.waitMs',
  PULSEGATE_DB_LANE_SYNC_QUEUE: 'databaseLanes.sync.queue',
  PULSEGATE_DB_LANE_SYNC_WAIT_MS: 'databaseLanes.sync.waitMs',
  PULSEGATE_DB_LANE_BACKGROUND_QUEUE: 'databaseLanes.background.queue',
  PULSEGATE_DB_LANE_BACKGROUND_WAIT_MS: 'databaseLanes.background.waitMs',
  PULSEGATE_EMBEDDED_THREAD: 'embeddedThread',
  PULSEGATE_REDIS_URL: 'redisUrl',
  PULSEGATE_CLUSTER_PREFIX: 'cluster.prefix',
  PULSEGATE_CLUSTER_REDIS_DB: 'cluster.redisDb',
  PULSEGATE_REDIS_SENTINELS: 'cluster.sentinels',
  PULSEGATE_REDIS_SENTINEL_NAME: 'cluster.sentinelName',
  PULSEGATE_CLUSTER_PACKET_TTL_S: 'cluster.packetTtlS',
  PULSEGATE_CLUSTER_LEASE_MS: 'cluster.leaseMs',
  PULSEGATE_CLUSTER_SESSION_IDLE_MS: 'cluster.sessionIdleMs',
  PULSEGATE_HOST: 'host',
  PULSEGATE_MQTT_PORT: 'mqttPort',
  PULSEGATE_MQTTS_PORT: 'mqttsPort',
  PULSEGATE_HTTP_PORT: 'httpPort',
  PULSEGATE_MQTT_ENABLED: 'mqttEnabled',
  PULSEGATE_MQTTS_ENABLED: 'mqttsEnabled',
  PULSEGATE_MQTTS_TOKEN_PORT: 'mqttsTokenPort',
  PULSEGATE_MQTTS_TOKEN_ENABLED: 'mqttsTokenEnabled',
  PULSEGATE_TLS_CA_FILE: 'tls.caFile',
  PULSEGATE_TLS_CERT_FILE: 'tls.certFile',
  PULSEGATE_TLS_KEY_FILE: 'tls.keyFile',
  PULSEGATE_TLS_WSS: 'tls.wss',
  PULSEGATE_TLS_RESUMPTION: 'tls.resumption',
  PULSEGATE_TLS_TICKET_SECRET: 'tls.ticketSecret',
  PULSEGATE_TLS_TICKET_ROTATION_MINUTES: 'tls.ticketRotationMinutes',
  PULSEGATE_TLS_SESSION_TIMEOUT_S: 'tls.sessionTimeoutS',
  PULSEGATE_JWT_SECRET: 'jwt.secret',
  PULSEGATE_JWKS_URL: 'jwt.jwksUrl',
  PULSEGATE_JWT_ISSUER: 'jwt.issuer',
  PULSEGATE_JWT_AUDIENCE: 'jwt.audience',
  PULSEGATE_LOG_LEVEL: 'logLevel',
  PULSEGATE_PSEUDONYM_KEY: 'privacy.pseudonymKey',
  PULSEGATE_PEOPLE_KEY: 'privacy.peopleKey',
  PULSEGATE_DEVICE_WRAP_KEY: 'privacy.deviceWrapKey',
  PULSEGATE_AUDIT_KEY_FILE: 'privacy.auditKeyFile',
  PULSEGATE_AUDIT_CHECKPOINT_MS: 'privacy.auditCheckpointMs',
  PULSEGATE_MAX_PACKET_BYTES: 'limits.maxPacketBytes',
  PULSEGATE_LIMIT_DEVICE_MSG_RATE: 'limits.rates.device.messagesPerSec',
  PULSEGATE_LIMIT_DEVICE_MSG_BURST: 'limits.rates.device.messageBurst',
  PULSEGATE_LIMIT_DEVICE_BYTE_RATE: 'limits.rates.device.bytesPerSec',
  PULSEGATE_LIMIT_DEVICE_BYTE_BURST: 'limits.rates.device.byteBurst',
  PULSEGATE_LIMIT_BRIDGE_MSG_RATE: 'limits.rates.bridge.messagesPerSec',
  PULSEGATE_LIMIT_BRIDGE_MSG_BURST: 'limits.rates.bridge.messageBurst',
  PULSEGATE_LIMIT_BRIDGE_BYTE_RATE: 'limits.rates.bridge.bytesPerSec',
  PULSEGATE_LIMIT_BRIDGE_BYTE_BURST: 'limits.rates.bridge.byteBurst',
  PULSEGATE_LIMIT_APP_MSG_RATE: 'limits.rates.app.messagesPerSec',
  PULSEGATE_LIMIT_APP_MSG_BURST: 'limits.rates.app.messageBurst',
  PULSEGATE_LIMIT_APP_BYTE_RATE: 'limits.rates.app.bytesPerSec',
  PULSEGATE_LIMIT_APP_BYTE_BURST: 'limits.rates.app.byteBurst',
  PULSEGATE_LIMIT_MEDIC_MSG_RATE: 'limits.rates.medic.messagesPerSec',
  PULSEGATE_LIMIT_MEDIC_MSG_BURST: 'limits.rates.medic.messageBurst',
  PULSEGATE_LIMIT_MEDIC_BYTE_RATE: 'limits.rates.medic.bytesPerSec',
  PULSEGATE_LIMIT_MEDIC_BYTE_BURST: 'limits.rates.medic.byteBurst',
  PULSEGATE_LIMIT_ADMIN_MSG_RATE: 'limits.rates.admin.messagesPerSec',
  PULSEGATE_LIMIT_ADMIN_MSG_BURST: 'limits.rates.admin.messageBurst',
  PULSEGATE_LIMIT_ADMIN_BYTE_RATE: 'limits.rates.admin.bytesPerSec',
  PULSEGATE_LIMIT_ADMIN_BYTE_BURST: 'limits.rates.admin.byteBurst',
  PULSEGATE_LIMIT_ABUSE_FACTOR: 'limits.abuse.factor',
  PULSEGATE_LIMIT_ABUSE_WINDOW_MS: 'limits.abuse.windowMs',
  PULSEGATE_MAX_CONNECTIONS_PER_IP: 'limits.maxConnectionsPerIp',
  PULSEGATE_FLAPPING_MAX_CONNECTS: 'limits.flapping.maxConnects',
  PULSEGATE_FLAPPING_WINDOW_MS: 'limits.flapping.windowMs',
  PULSEGATE_FLAPPING_BAN_MS: 'limits.flapping.banMs',
  PULSEGATE_MAX_TLS_HANDSHAKES: 'limits.maxTlsHandshakes',
  PULSEGATE_MAX_QUEUED_HANDSHAKES: 'limits.maxQueuedHandshakes',
  PULSEGATE_MAX_HANDSHAKE_WAIT_MS: 'limits.maxHandshakeWaitMs',
  PULSEGATE_OUTBOUND_SOFT_BYTES: 'limits.outbound.softBytes',
  PULSEGATE_OUTBOUND_HARD_BYTES: 'limits.outbound.hardBytes',
  PULSEGATE_OUTBOUND_KEEP_TOPICS: 'limits.outbound.keepTopics',
  PULSEGATE_BROWNOUT_ENABLED: 'limits.brownout.enabled',
  PULSEGATE_BROWNOUT_SAMPLE_MS: 'limits.brownout.sampleMs',
  PULSEGATE_BROWNOUT_ENTER_LATENCY_MS: 'limits.brownout.enter.commitLatencyMs',
  PULSEGATE_BROWNOUT_ENTER_QUEUE_ROWS: 'limits.brownout.enter.queueRows',
  PULSEGATE_BROWNOUT_ENTER_FOR_MS: 'limits.brownout.enter.forMs',
  PULSEGATE_BROWNOUT_LEAVE_LATENCY_MS: 'limits.brownout.leave.commitLatencyMs',
  PULSEGATE_BROWNOUT_LEAVE_QUEUE_ROWS: 'limits.brownout.leave.queueRows',
  PULSEGATE_BROWNOUT_LEAVE_FOR_MS: 'limits.brownout.leave.forMs',
  PULSEGATE_BROWNOUT_BATCH_EVERY: 'limits.brownout.batchEvery',
  PULSEGATE_BROWNOUT_NORMAL_BATCH_EVERY: 'limits.brownout.normalBatchEvery',
  PULSEGATE_BROWNOUT_MAX_DEVICES: 'limits.brownout.maxDevices',
  PULSEGATE_BROWNOUT_RANK_WINDOW_MS: 'limits.brownout.rankWindowMs',
  PULSEGATE_INGEST_MAX_BATCH_ROWS: 'ingest.maxBatchRows',
  PULSEGATE_INGEST_FLUSH_MS: 'ingest.flushIntervalMs',
  PULSEGATE_INGEST_MAX_QUEUED_ROWS: 'ingest.maxQueuedRows',
  PULSEGATE_INGEST_WRITERS: 'ingest.writers',
  PULSEGATE_INGEST_COMMIT_TIMEOUT_MS: 'ingest.commitTimeoutMs',
  PULSEGATE_LATE_WINDOW_MS: 'ingest.lateWindowMs',
  PULSEGATE_SILENT_RUNNER_MS: 'outputs.silentRunnerMs',
  PULSEGATE_GPS_SOURCE_SWITCH_MS: 'outputs.gpsSourceSwitchMs',
  PULSEGATE_LIVE_ENABLED: 'live.enabled',
  PULSEGATE_LIVE_MAX_CLIENTS: 'live.maxClients',
  PULSEGATE_LIVE_HEARTBEAT_MS: 'live.heartbeatMs',
  PULSEGATE_LIVE_MIN_INTERVAL_MS: 'live.minIntervalMs',
  PULSEGATE_LIVE_MAX_QUEUED_BYTES: 'live.maxQueuedBytes',
  PULSEGATE_LIVE_RETRY_MS: 'live.retryMs',
  PULSEGATE_LIVE_RUNNER_POSITIONS: 'live.runnerPositions',
  PULSEGATE_CONSOLE_TILE_URL: 'console.tileUrl',
  PULSEGATE_CONSOLE_TILE_ATTRIBUTION: 'console.tileAttribution',
  PULSEGATE_PREFERENCES_MAX_CLOCK_AHEAD_MS: 'preferences.maxClockAheadMs',
  PULSEGATE_DP_ENABLED: 'dp.enabled',
  PULSEGATE_DP_EPSILON: 'dp.epsilonPerRelease',
  PULSEGATE_DP_BUDGET_PER_DAY: 'dp.budgetPerDay',
  PULSEGATE_DP_INTERVAL_MS: 'dp.intervalMs',
  PULSEGATE_DP_SUPPRESS_BELOW: 'dp.suppressBelow',
  PULSEGATE_DP_EVENT_WINDOW_MS: 'dp.eventWindowMs',
  PULSEGATE_CONTROL_LISTEN: 'control.listen',
  PULSEGATE_CONTROL_RECONNECT_MAX_MS: 'control.reconnectMaxMs',
  PULSEGATE_NODE_NAME: 'node.name',
  PULSEGATE_PROXY_MQTT: 'proxy.mqtt',
  PULSEGATE_PROXY_MQTTS: 'proxy.mqtts',
  PULSEGATE_PROXY_HTTP: 'proxy.http',
  PULSEGATE_PROXY_TRUSTED: 'proxy.trusted',
  PULSEGATE_PROXY_HEADER_TIMEOUT_MS: 'proxy.headerTimeoutMs',
  PULSEGATE_PROXY_TLS_IDENTITY: 'proxy.tlsIdentity',
  PULSEGATE_READY_REDIS_DOWN_MS: 'readiness.redisDownMs',
  PULSEGATE_INSIGHTS_ENABLED: 'insights.enabled',
  PULSEGATE_INSIGHTS_TICK_MS: 'insights.tickMs',
  PULSEGATE_INSIGHTS_DAILY_AT: 'insights.dailyAt',
  PULSEGATE_INSIGHTS_SPREAD_MINUTES: 'insights.spreadMinutes',
  PULSEGATE_INSIGHTS_DAILY_BUDGET: 'insights.dailyBudget',
  PULSEGATE_INSIGHTS_MIN_SAMPLES_PER_MINUTE: 'insights.minSamplesPerMinute',
  PULSEGATE_WEBHOOK_URL: 'webhook.url',
  PULSEGATE_WEBHOOK_SECRET: 'webhook.secret',
  PULSEGATE_WEBHOOK_CA_FILE: 'webhook.caFile',
  PULSEGATE_WEBHOOK_TIMEOUT_MS: 'webhook.timeoutMs',
  PULSEGATE_WEBHOOK_MAX_ATTEMPTS: 'webhook.maxAttempts',
  PULSEGATE_WEBHOOK_BACKOFF_BASE_MS: 'webhook.backoffBaseMs',
  PULSEGATE_WEBHOOK_BACKOFF_MAX_MS: 'webhook.backoffMaxMs',
  PULSEGATE_WEBHOOK_CONCURRENCY: 'webhook.concurrency',
  PULSEGATE_WEBHOOK_MAX_QUEUED: 'webhook.maxQueued',
  PULSEGATE_WEBHOOK_RECOMMENDATIONS: 'webhook.recommendations',
  PULSEGATE_WEBHOOK_CLAIM_MS: 'webhook.claimMs',
  PULSEGATE_WEBHOOK_SWEEP_MS: 'webhook.sweepMs',
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
      mqttsTokenPort: 0,
      httpPort: 0,
      logLevel: base.logLevel,
      jwt: { secret: base.jwtSecret },
      shutdownSignals: false,
      ...overrides,
      // Redis channels and keys of its own: runs side by side on one Redis never cross-deliver (cluster mode).
      cluster: { prefix: `pgt-${randomBytes(5).toString('hex')}`, ...overrides.cluster },
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

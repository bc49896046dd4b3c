// Assembles pulsegate: config → store → identity → pipeline → outputs → hooks → Aedes → listeners → HTTP, and owns
// start and stop. The hooks (src/hooks/) are the named lifecycle points: authenticate (who is this), authorizePublish
// (may they, and for readings: commit before PUBACK), authorizeSubscribe (may they), authorizeForward (count deliveries).
import fs from 'node:fs'
import type http from 'node:http'
import type net from 'node:net'
import { Aedes, type Client } from 'aedes'
import type { BrokerConfig } from '../broker.config.js'
import { createAuthenticate } from './hooks/authenticate.js'
import { createAuthorizePublish } from './hooks/authorize-publish.js'
import { createAuthorizeSubscribe } from './hooks/authorize-subscribe.js'
import { watchClientEvents } from './hooks/client-events.js'
import { ConsumedRouting } from './hooks/consumed-routing.js'
import { createAuthorizeForward } from './hooks/forward.js'
import type { Principals } from './hooks/types.js'
import { CachedLookups } from './identity/lookups.js'
import type { Principal } from './identity/principal.js'
import { Tokens } from './identity/tokens.js'
import { createPreferencesMetrics } from './insights/preferences/metrics.js'
import { aedesPublisher, PreferencesService } from './insights/preferences/service.js'
import { PreferencesStore } from './insights/preferences/store.js'
import { DpPublisher } from './insights/dp/publisher.js'
import { InsightsEngine } from './insights/engine.js'
import { createInsightsMetrics } from './insights/metrics.js'
import { createLogger, type Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { openAuditLog } from './ops/audit.js'
import { openPrivacyServices } from './ops/privacy-services.js'
import type { AuditActor } from './ops/audit-types.js'
import type { ErasureReport, ErasureStage } from './ops/erase.js'
import { createBrokerErasure, indexSessions, type SessionPersistence } from './ops/erase-live.js'
import { ErasureGuard } from './ops/erasure-guard.js'
import { OutputEngine } from './outputs/engine.js'
import { type LeaderboardStore, MemoryLeaderboard, RedisLeaderboard } from './outputs/leaderboard.js'
import { indexRetained, type RetainedPersistence } from './outputs/retained-index.js'
import { SyncService } from './outputs/sync.js'
import { GroupCommitWriter } from './pipeline/commit.js'
import { Ingest } from './pipeline/ingest.js'
import type { Db } from './store/db.js'
import { updateEmbeddedLock } from './store/embedded.js'
import { migrate } from './store/migrate.js'
import { openDb } from './store/open.js'
import { openPostgres } from './store/postgres.js'
import { Registry } from './store/registry.js'
import { createHttpRoutes } from './transport/http-routes.js'
import {
  createHttpServer,
  createTcpServer,
  createTlsServer,
  listen,
  type TransportDeps,
} from './transport/listeners.js'
import { loadTls } from './transport/tls-material.js'

export interface Pulsegate {
  config: BrokerConfig
  log: Logger
  metrics: Metrics
  db: Db
  registry: Registry
  tokens: Tokens
  broker: Aedes
  ingest: Ingest
  writer: GroupCommitWriter
  outputs: OutputEngine
  /** synced user preferences; the PreferencesReader of the recommendation engine */
  preferences: PreferencesService
  leaderboard: LeaderboardStore
  /** differentially private event statistics (events/{eid}/stats) */
  dp: DpPublisher
  /** personalised recommendations (users/{uid}/recommendations) */
  insights: InsightsEngine
  /** true when the store has TimescaleDB (hypertables, rollups) */
  timescale: boolean
  ports: { mqtt: number | null; mqtts: number | null; http: number }
  /** publishes from the broker itself (rejections, alerts, live snapshots) */
  publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean): void
  /** the principal of a connected client id, if any */
  principalOf(clientId: string): Principal | undefined
  /** erases every trace of a user, live (src/ops/erase.ts); two erasures of one user run one after the other */
  eraseUser(
    userId: string,
    opts?: { actor?: AuditActor; onStage?: (stage: ErasureStage) => void | Promise<void> },
  ): Promise<ErasureReport>
  /** what this process refuses because of erasures */
  erasure: ErasureGuard
  stop(): Promise<void>
}

export interface StartOptions {
  log?: Logger
}

export async function startPulsegate(config: BrokerConfig, opts: StartOptions = {}): Promise<Pulsegate> {
  const log = opts.log ?? createLogger(config.logLevel)
  fs.mkdirSync(config.dataDir, { recursive: true })
  const metrics = createMetrics()
  const needTls = config.mqttsEnabled || config.tls.wss
  const tlsMaterial = needTls ? await loadTls(config, log) : null

  const db = await openDb(config, log)
  let timescale = false
  try {
    timescale = (await migrate(db, log)).timescale
  } catch (err) {
    await db.close()
    throw err
  }
  const registry = new Registry(db)
  const audit = openAuditLog(db, config, log.child({ stage: 'audit' }))
  // Keys are checked against the database's key fingerprints here: a broker holding another key does not start.
  const privacy = await openPrivacyServices(config, db, { audit, metrics: metrics.registry, log }).catch(
    async (err: unknown) => {
      await audit.stop()
      await db.close()
      throw err
    },
  )
  const lookups = new CachedLookups(registry)
  const tokens = new Tokens(config)
  // The group-commit writer gets connections of its own on a server: registry look-ups at a connect storm and output
  // queries must never queue in front of the commits that PUBACKs wait for. (The embedded store has one session.)
  const writerDb = config.databaseUrl ? openPostgres(config.databaseUrl, config.ingest.writers, log) : db
  const writer = new GroupCommitWriter(writerDb, config.ingest, metrics, log.child({ stage: 'commit' }))
  const principals: Principals = new WeakMap<Client, Principal>()
  const routing = new ConsumedRouting()
  const erasure = new ErasureGuard(metrics.registry)

  // `broker` is assigned right below; the publisher is only called once clients are connected.
  let broker: Aedes | null = null
  const publish = (topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean) => {
    broker?.publish(
      {
        cmd: 'publish',
        topic,
        payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
        qos,
        retain,
        dup: false,
      },
      (err) => {
        if (err) log.warn({ err: err.message, topic }, 'internal publish failed')
      },
    )
  }
  const ingest = new Ingest(db, writer, { publish }, metrics, log.child({ stage: 'ingest' }), config.ingest, erasure)
  const leaderboard: LeaderboardStore = config.redisUrl
    ? new RedisLeaderboard(config.redisUrl)
    : new MemoryLeaderboard()
  const outputs = new OutputEngine(
    db,
    leaderboard,
    privacy.consent,
    { publish },
    metrics,
    log.child({ stage: 'outputs' }),
  )
  ingest.onCommitted((batch) => outputs.onCommitted(batch))
  const dp = new DpPublisher(db, { publish }, metrics, log.child({ stage: 'dp' }), config.dp, privacy.consent)
  const sync = new SyncService(db, { publish }, metrics, log.child({ stage: 'sync' }), () => timescale)
  const preferences = new PreferencesService(
    new PreferencesStore(db),
    aedesPublisher(() => broker),
    config.preferences,
    createPreferencesMetrics(metrics.registry),
    log.child({ stage: 'preferences' }),
  )
  const insights = new InsightsEngine({
    db,
    timescale: () => timescale,
    consent: privacy.consent,
    preferences,
    publisher: { publish },
    metrics: createInsightsMetrics(metrics.registry),
    log: log.child({ stage: 'insights' }),
    settings: config.insights,
  })
  // Streaming rules (move reminders) see the same committed batches as the outputs, never the raw ingest path.
  ingest.onCommitted((batch) => insights.onCommitted(batch))

  const { maxClientIdLength } = config.limits
  broker = await Aedes.createBroker({
    // concurrency 0: no bounded mq queue, which avoids mqemitter's stack-overflow crash with slow subscribers.
    concurrency: 0,
    connectTimeout: config.limits.connectTimeoutMs,
    drainTimeout: config.limits.drainTimeoutMs,
    maxClientsIdLength: maxClientIdLength,
    authenticate: createAuthenticate({ lookups, tokens, principals, metrics, log, maxClientIdLength, erasure }),
    authorizePublish: createAuthorizePublish({
      lookups,
      principals,
      ingest,
      sync,
      consent: privacy.consent,
      preferences,
      audit,
      publish,
      routing,
      metrics,
      log,
      erasure,
    }),
    authorizeSubscribe: createAuthorizeSubscribe({
      lookups,
      principals,
      routing,
      audit,
      preferences,
      metrics,
      log,
    }),
    authorizeForward: createAuthorizeForward({ metrics }),
  })
  watchClientEvents(broker, { principals, routing, metrics, log })

  const aedes = broker
  // Aedes' default in-memory persistence (the only one configured here): index its retained messages by topic and
  // the ids of its stored sessions (erasure finds a person's by client id).
  const persistence = (aedes as unknown as { persistence: RetainedPersistence & SessionPersistence }).persistence
  indexRetained(persistence)
  const sessions = indexSessions(persistence)
  routing.install(aedes)
  // Aedes keeps connected clients by id at runtime; its types leave the map out.
  const clientsById = () => (aedes as unknown as { clients: Record<string, Client | undefined> }).clients

  const eraseLive = createBrokerErasure({
    db,
    aedes,
    principals,
    persistence,
    sessions,
    guard: erasure,
    lookups,
    writer,
    ingest,
    outputs,
    audit,
    log,
    forget: [
      (userId) => privacy.consent.forget([userId]),
      (userId) => void preferences.erase(userId),
      (userId) => insights.forget(userId),
    ],
  })
  const deps: TransportDeps = {
    handle: (stream, req) => aedes.handle(stream, req),
    maxPacketBytes: config.limits.maxPacketBytes,
    metrics,
    log,
  }
  const servers: net.Server[] = []
  const ports: Pulsegate['ports'] = { mqtt: null, mqtts: null, http: 0 }
  let ready = false
  let stopping: Promise<void> | null = null

  const routes = createHttpRoutes({
    config,
    metrics,
    registry,
    tokens,
    db,
    writer,
    isReady: () => ready && !stopping,
    onDeviceRevoked: (deviceId) => {
      lookups.forgetDevice(deviceId)
      clientsById()[deviceId]?.close()
    },
    onDevicesRegistered: (deviceIds) => {
      for (const d of deviceIds) lookups.forgetDevice(d)
    },
    // The outputs' consent cache is this service's: a change through the RPC reaches the next publish.
    privacy: () => Promise.resolve(privacy),
    audit,
    eraseUser: (userId, actor) => eraseLive(userId, { actor }),
    insights,
    log,
  })
  const httpServer: http.Server = createHttpServer(
    { ...deps, verifyBearer: (t) => tokens.verify(t), onRequest: routes },
    config.tls.wss ? tlsMaterial : null,
  )

  try {
    if (config.mqttEnabled) {
      const s = createTcpServer(deps)
      servers.push(s)
      ports.mqtt = await listen(s, config.mqttPort, config.host)
    }
    if (config.mqttsEnabled && tlsMaterial) {
      const s = createTlsServer(deps, tlsMaterial)
      servers.push(s)
      ports.mqtts = await listen(s, config.mqttsPort, config.host)
    }
    servers.push(httpServer)
    ports.http = await listen(httpServer, config.httpPort, config.host)
  } catch (err) {
    for (const s of servers) s.close()
    await new Promise<void>((r) => aedes.close(() => r()))
    await leaderboard.close()
    await audit.stop()
    if (writerDb !== db) await writerDb.close()
    await db.close()
    throw err
  }
  if (db.kind === 'embedded') updateEmbeddedLock(config.dataDir, { httpPort: ports.http, host: config.host })
  outputs.start()
  audit.startCheckpoints(config.privacy.auditCheckpointMs)
  dp.start()
  insights.start()
  ready = true
  log.info({ ports, store: db.kind }, 'pulsegate listening')

  const stop = () => {
    stopping ??= (async () => {
      log.info('shutting down: no new connections; finishing in-flight commits')
      for (const s of servers) s.close()
      await dp.stop()
      await insights.stop()
      // In-flight QoS 1 batches get their PUBACK when their commit lands; new ones are refused (devices retry).
      const drained = await writer.close(config.limits.shutdownTimeoutMs)
      if (!drained)
        log.warn({ queuedRows: writer.queuedRows }, 'shutdown timeout: unacknowledged rows left (devices will resend)')
      await new Promise<void>((r) => aedes.close(() => r()))
      httpServer.closeAllConnections()
      await audit.stop()
      if (writerDb !== db) await writerDb.close()
      await db.close()
      log.info('stopped')
    })()
    return stopping
  }

  return {
    config,
    log,
    metrics,
    db,
    registry,
    tokens,
    broker: aedes,
    ingest,
    writer,
    outputs,
    preferences,
    leaderboard,
    dp,
    insights,
    timescale,
    ports,
    publish,
    principalOf: (clientId) => {
      const c = clientsById()[clientId]
      return c ? principals.get(c) : undefined
    },
    eraseUser: eraseLive,
    erasure,
    stop,
  }
}

// Assembles pulsegate: config → store → identity → pipeline → outputs → hooks → Aedes → listeners → HTTP, and owns
// start and stop. The hooks (src/hooks/) are the named lifecycle points: authenticate (who is this), authorizePublish
// (may they, and for readings: commit before PUBACK), authorizeSubscribe (may they), authorizeForward (count deliveries).
import fs from 'node:fs'
import type http from 'node:http'
import type net from 'node:net'
import type { Aedes, Client } from 'aedes'
import type { BrokerConfig } from '../broker.config.js'
import { CONTROL_CHANNEL, ControlPlane } from './cluster/control-plane.js'
import { openCluster } from './cluster/index.js'
import { ConsumedRouting } from './hooks/consumed-routing.js'
import { createHookedBroker } from './hooks/install.js'
import type { Principals } from './hooks/types.js'
import { openDeviceKeys } from './identity/device-keys.js'
import { CachedLookups } from './identity/lookups.js'
import type { Principal } from './identity/principal.js'
import { Tokens } from './identity/tokens.js'
import { createPreferencesMetrics } from './insights/preferences/metrics.js'
import { aedesPublisher, PreferencesService } from './insights/preferences/service.js'
import { PreferencesStore } from './insights/preferences/store.js'
import { DpPublisher } from './insights/dp/publisher.js'
import { installBrownout } from './limits/index.js'
import { InsightsEngine } from './insights/engine.js'
import { createInsightsMetrics } from './insights/metrics.js'
import { createLogger, type Logger } from './log.js'
import { createMetrics } from './metrics.js'
import { openAuditLog } from './ops/audit.js'
import { openPrivacyServices } from './ops/privacy-services.js'
import { PrivacyZoneIndex } from './ops/privacy-zones.js'
import { ZoneOperations } from './ops/zones.js'
import { brokerLiveEraser, createBrokerErasure, indexSessions, type SessionPersistence } from './ops/erase-live.js'
import { ErasureGuard } from './ops/erasure-guard.js'
import { DEFAULT_OUTPUT_SETTINGS, OutputEngine } from './outputs/engine.js'
import { boardPrefix, type LeaderboardStore, MemoryLeaderboard, RedisLeaderboard } from './outputs/leaderboard.js'
import { indexRetained, type RetainedPersistence } from './outputs/retained-index.js'
import { SyncService } from './outputs/sync.js'
import { openWebhooks } from './outputs/webhook/service.js'
import { GroupCommitWriter } from './pipeline/commit.js'
import { Ingest } from './pipeline/ingest.js'
import { updateEmbeddedLock } from './store/embedded.js'
import { migrate } from './store/migrate.js'
import { openDb, openWriterDb } from './store/open.js'
import { Registry } from './store/registry.js'
import { createHttpRoutes } from './transport/http-routes.js'
import { installLive } from './transport/live-routes.js'
import { createHttpServer, type TransportDeps } from './transport/listeners.js'
import { RedisReadiness } from './transport/readiness.js'
import { startListeners } from './transport/start-listeners.js'
import { loadTls } from './transport/tls-material.js'

import type { Pulsegate, StartOptions } from './pulsegate.js'

export type { Pulsegate, StartOptions }

/** Waits for `work` until `deadline` (at least 1 s); past it, logs what was left open and returns. */
async function within(deadline: number, log: Logger, what: string, work: Promise<unknown>): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), Math.max(1000, deadline - Date.now()))
    timer.unref()
  })
  const outcome = await Promise.race([work.then(() => 'done' as const), late])
  clearTimeout(timer)
  if (outcome === 'late') log.warn({ what }, 'shutdown timeout: closing it was abandoned')
}

export async function startPulsegate(config: BrokerConfig, opts: StartOptions = {}): Promise<Pulsegate> {
  const log = opts.log ?? createLogger(config.logLevel)
  fs.mkdirSync(config.dataDir, { recursive: true })
  const metrics = createMetrics()
  // One node of several behind a load balancer: every series says which (Prometheus also adds `instance`).
  metrics.registry.setDefaultLabels({ node: config.node.name })
  const needTls = config.mqttsEnabled || config.mqttsTokenEnabled || config.tls.wss
  const tlsMaterial = needTls ? await loadTls(config, log) : null

  // Cluster mode (src/cluster/) when Redis and a server database are set; refused on the embedded store.
  const cluster = openCluster(config, log, metrics)
  const db = await openDb(config, log, metrics)
  let timescale = false
  try {
    timescale = (await migrate(db, log)).timescale
  } catch (err) {
    await db.close()
    throw err
  }
  const registry = new Registry(db.lane('identity'))
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
  const writerDb = openWriterDb(config, db, log, metrics)
  const writer = new GroupCommitWriter(writerDb.lane('commit'), config.ingest, metrics, log.child({ stage: 'commit' }))
  const principals: Principals = new WeakMap<Client, Principal>()
  const routing = new ConsumedRouting()
  const erasure = new ErasureGuard(metrics.registry)

  // Push for offline apps: sees what the broker publishes on users/{uid}/alerts|recommendations (off the ingest path).
  const webhooks = openWebhooks(config, {
    db: db.lane('outputs'),
    consent: privacy.consent,
    registry: metrics.registry,
    log,
    exclusive: !cluster,
  })
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
    webhooks?.observe(topic, payload)
  }
  const ingest = new Ingest(db, writer, { publish }, metrics, log.child({ stage: 'ingest' }), config.ingest, erasure)
  ingest.useDeviceKeys(openDeviceKeys(db.lane('identity'), config, lookups))
  const leaderboard: LeaderboardStore = config.redisUrl
    ? new RedisLeaderboard(config.redisUrl, boardPrefix(config.cluster.prefix))
    : new MemoryLeaderboard()
  const redisLog = { log, registry: metrics.registry, url: config.redisUrl ?? '' }
  const redisReadiness = new RedisReadiness(config.readiness.redisDownMs, Date.now, redisLog)
  if (leaderboard instanceof RedisLeaderboard) redisReadiness.watch(leaderboard.connection, 'leaderboard')
  const preferences = new PreferencesService(
    new PreferencesStore(db.lane('outputs')),
    aedesPublisher(() => broker),
    config.preferences,
    createPreferencesMetrics(metrics.registry),
    log.child({ stage: 'preferences' }),
  )
  // Privacy zones are preference fields: the outputs ask this index, which follows the preferences' cache.
  const zones = new PrivacyZoneIndex(preferences)
  const outputs = new OutputEngine(
    db.lane('outputs'),
    leaderboard,
    privacy.consent,
    { publish },
    metrics,
    log.child({ stage: 'outputs' }),
    {
      ...DEFAULT_OUTPUT_SETTINGS,
      silentRunnerMs: config.outputs.silentRunnerMs,
      distanceSourceSwitchMs: config.outputs.gpsSourceSwitchMs,
    },
    zones,
  )
  ingest.onCommitted((batch) => (cluster ? cluster.route(batch) : outputs.onCommitted(batch)))
  const dp = new DpPublisher(db, { publish }, metrics, log.child({ stage: 'dp' }), config.dp, privacy.consent)
  const sync = new SyncService(db.lane('sync'), { publish }, metrics, log.child({ stage: 'sync' }), () => timescale)
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

  const hooked = await createHookedBroker({
    limits: config.limits,
    authenticate: {
      lookups,
      tokens,
      principals,
      metrics,
      log,
      maxClientIdLength: config.limits.maxClientIdLength,
      erasure,
    },
    authorizePublish: {
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
    },
    authorizeSubscribe: { lookups, principals, routing, audit, preferences, metrics, log },
    principals,
    routing,
    metrics,
    log,
    ...(cluster ? { aedesOptions: cluster.aedesOptions } : {}),
    onDeviceSignedOff: (userId, deviceId) => outputs.deviceSignedOff(userId, deviceId),
  })
  broker = hooked.broker
  const { limits } = hooked

  const aedes = broker
  // Aedes' persistence (in memory, or Redis in cluster mode): index its retained messages by topic and the ids of its
  // stored sessions (erasure finds a person's by client id).
  const persistence = (aedes as unknown as { persistence: RetainedPersistence & SessionPersistence }).persistence
  // Not on Redis: the index would see only this node's retained messages and hide the others' (HGET is O(1) there).
  if (!cluster) indexRetained(persistence)
  const sessions = indexSessions(persistence)
  installBrownout(aedes, { settings: config.limits.brownout, writer, persistence, publish, metrics, log })
  routing.install(aedes)
  webhooks?.attach(aedes, principals)
  await cluster?.attach({ aedes, db, ingest, outputs, principals, presence: webhooks?.presence })
  // Aedes keeps connected clients by id at runtime; its types leave the map out.
  const clientsById = () => (aedes as unknown as { clients: Record<string, Client | undefined> }).clients

  const liveDeps = {
    aedes,
    principals,
    persistence,
    sessions,
    guard: erasure,
    lookups,
    writer,
    ingest,
    outputs,
    forget: [
      (userId: string) => privacy.consent.forget([userId]),
      (userId: string) => void preferences.erase(userId),
      (userId: string) => insights.forget(userId),
      (userId: string) => live.forget(userId),
      (userId: string) => webhooks?.forget(userId),
    ],
  }
  const control = new ControlPlane({
    url: db.kind === 'postgres' ? (config.databaseUrl ?? null) : null,
    enabled: config.control.listen,
    reconnectMaxMs: config.control.reconnectMaxMs,
    lookups,
    consent: privacy.consent,
    publish,
    clients: clientsById,
    principals,
    live: brokerLiveEraser(liveDeps),
    notify: async (payload) => void (await db.query('SELECT pg_notify($1, $2)', [CONTROL_CHANNEL, payload])),
    metrics: metrics.registry,
    log: log.child({ stage: 'control' }),
  })
  const eraseBroker = createBrokerErasure({ ...liveDeps, db, audit, log })
  const eraseLive: typeof eraseBroker = (userId, o) => control.localErasure(userId, () => eraseBroker(userId, o))
  const deps: TransportDeps = {
    handle: (stream, req) => aedes.handle(stream, req),
    maxPacketBytes: config.limits.maxPacketBytes,
    metrics,
    log,
    proxy: config.proxy,
  }
  const servers: net.Server[] = []
  let ports: Pulsegate['ports'] = { mqtt: null, mqtts: null, mqttsToken: null, http: 0 }
  let ready = false
  let stopping: Promise<void> | null = null

  const livePrivacy = {
    ...privacy,
    zones: new ZoneOperations(db, new PreferencesStore(db), audit, (u, p) => preferences.handle(u, p)),
  }
  const live = installLive({ ...liveDeps, config, consent: privacy.consent, zones, db, tokens, metrics, log })
  const routes = createHttpRoutes({
    config,
    metrics,
    registry,
    tokens,
    db,
    writer,
    isReady: () => ready && !stopping,
    redis: redisReadiness,
    onDeviceRevoked: (deviceId) => {
      lookups.forgetDevice(deviceId)
      clientsById()[deviceId]?.close()
    },
    onDevicesRegistered: (deviceIds) => void control.devicesChanged(deviceIds),
    // The outputs' consent cache is this service's: a change through the RPC reaches the next publish.
    // Zone edits through the RPC go through the preferences service, so the zone index has them at once.
    privacy: () => Promise.resolve(livePrivacy),
    audit,
    eraseUser: (userId, actor) => eraseLive(userId, { actor }),
    insights,
    live,
    console: { sync, zones, publish },
    log,
  })
  const httpServer: http.Server = createHttpServer(
    { ...deps, verifyBearer: (t) => tokens.verify(t), onRequest: routes },
    config.tls.wss ? tlsMaterial : null,
  )

  try {
    // Before the listeners: a change written elsewhere from now on is heard.
    await control.start()
    ports = await startListeners(config, deps, {
      tls: tlsMaterial,
      http: httpServer,
      limits: limits.metrics,
      log,
      servers,
    })
  } catch (err) {
    for (const s of servers) s.close()
    await control.stop()
    await cluster?.stop()
    await new Promise<void>((r) => aedes.close(() => r()))
    await cluster?.close()
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
  webhooks?.start()
  ready = true
  log.info({ ports, store: db.kind }, 'pulsegate listening')

  const stop = () => {
    stopping ??= (async () => {
      log.info('shutting down: no new connections; finishing in-flight commits')
      const deadline = Date.now() + config.limits.shutdownTimeoutMs
      for (const s of servers) s.close()
      live.stop()
      limits.stop()
      await dp.stop()
      await insights.stop()
      await webhooks?.stop()
      // In-flight QoS 1 batches get their PUBACK when their commit lands; new ones are refused (devices retry).
      const drained = await writer.close(config.limits.shutdownTimeoutMs)
      if (!drained)
        log.warn({ queuedRows: writer.queuedRows }, 'shutdown timeout: unacknowledged rows left (devices will resend)')
      await control.stop()
      await cluster?.stop()
      await new Promise<void>((r) => aedes.close(() => r()))
      await cluster?.close()
      httpServer.closeAllConnections()
      // A statement stuck in the database (a lock, a hung connection) would hold pool.end() forever: the closes share
      // what is left of the grace period (at least 1 s), and what they leave open dies with the process.
      await within(deadline, log, 'audit log', audit.stop())
      if (writerDb !== db) await within(deadline, log, 'commit connections', writerDb.close())
      await within(deadline, log, 'database', db.close())
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
    webhooks,
    timescale,
    ports,
    publish,
    principalOf: (clientId) => {
      const c = clientsById()[clientId]
      return c ? principals.get(c) : undefined
    },
    eraseUser: eraseLive,
    erasure,
    control,
    limits,
    stop,
  }
}

// Assembles pulsegate: listeners → identity → topic ACL → ingest pipeline → store, with HTTP operations beside.
// Aedes' hooks are the named lifecycle points: authenticate (who is this), authorizePublish (may they, and for
// readings: commit before PUBACK), authorizeSubscribe (may they), authorizeForward (count deliveries).
import type { EventEmitter } from 'node:events'
import fs from 'node:fs'
import type http from 'node:http'
import type net from 'node:net'
import { Aedes, type AuthenticateError, type Client } from 'aedes'
import type { BrokerConfig } from '../broker.config.js'
import { canPublish, canSubscribe } from './identity/acl.js'
import { deviceIdFromCert } from './identity/certificate.js'
import { CachedLookups } from './identity/lookups.js'
import { initPki, pkiExists, pkiPaths } from './identity/pki.js'
import { clientIdAllowed, type Principal } from './identity/principal.js'
import { TokenError, Tokens } from './identity/tokens.js'
import { createLogger, type Logger } from './log.js'
import { createMetrics, type Metrics } from './metrics.js'
import { GroupCommitWriter } from './pipeline/commit.js'
import { Ingest, type IngestSource } from './pipeline/ingest.js'
import type { Db } from './store/db.js'
import { updateEmbeddedLock } from './store/embedded.js'
import { migrate } from './store/migrate.js'
import { OutputEngine } from './outputs/engine.js'
import { type LeaderboardStore, MemoryLeaderboard, RedisLeaderboard } from './outputs/leaderboard.js'
import { indexRetained, type RetainedPersistence } from './outputs/retained-index.js'
import { SyncService } from './outputs/sync.js'
import { filterMayMatchInbound } from './topics/grammar.js'
import { openDb } from './store/open.js'
import { openPostgres } from './store/postgres.js'
import { Registry } from './store/registry.js'
import { connInfo } from './transport/connection.js'
import { createHttpRoutes } from './transport/http-routes.js'
import {
  createHttpServer,
  createTcpServer,
  createTlsServer,
  listen,
  type TlsMaterial,
  type TransportDeps,
} from './transport/listeners.js'

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
  leaderboard: LeaderboardStore
  /** true when the store has TimescaleDB (hypertables, rollups) */
  timescale: boolean
  ports: { mqtt: number | null; mqtts: number | null; http: number }
  /** publishes from the broker itself (rejections, alerts, live snapshots) */
  publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean): void
  /** the principal of a connected client id, if any */
  principalOf(clientId: string): Principal | undefined
  stop(): Promise<void>
}

function authError(message: string, code: 2 | 3 | 4 | 5): AuthenticateError {
  return Object.assign(new Error(message), { returnCode: code }) as AuthenticateError
}

function loadTls(config: BrokerConfig, log: Logger): Promise<TlsMaterial> | TlsMaterial {
  const { caFile, certFile, keyFile } = config.tls
  if (caFile && certFile && keyFile) {
    return { ca: fs.readFileSync(caFile), cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }
  }
  const dir = `${config.dataDir}/pki`
  const p = pkiPaths(dir)
  const read = () => ({
    ca: fs.readFileSync(p.caCert),
    cert: fs.readFileSync(p.serverCert),
    key: fs.readFileSync(p.serverKey),
  })
  if (pkiExists(dir)) return read()
  return initPki(dir).then(() => {
    log.warn(
      { dir },
      'no TLS material configured: created a development PKI. Issue a device certificate with `pulsegate pki device <deviceId> --user <userId>`',
    )
    return read()
  })
}

export async function startPulsegate(config: BrokerConfig, opts: { log?: Logger } = {}): Promise<Pulsegate> {
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
  const lookups = new CachedLookups(registry)
  const tokens = new Tokens(config)
  // The group-commit writer gets connections of its own on a server: registry look-ups at a connect storm and output
  // queries must never queue in front of the commits that PUBACKs wait for. (The embedded store has one session.)
  const writerDb = config.databaseUrl ? openPostgres(config.databaseUrl, config.ingest.writers, log) : db
  const writer = new GroupCommitWriter(writerDb, config.ingest, metrics, log.child({ stage: 'commit' }))
  const principals = new WeakMap<Client, Principal>()
  // Readings and status are consumed by the pipeline (SPEC: no firehose). Routing them on through Aedes (offline-queue
  // match, mqemitter match, 'publish' event) cost ~6 % of the broker's CPU at race-day rates with no receiver, so a
  // consumed packet is routed only while an admin with a filter that can match it is connected (diagnostics).
  const consumed = new WeakSet<object>()
  const tapping = new Set<Client>()

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
  const ingest = new Ingest(db, writer, { publish }, metrics, log.child({ stage: 'ingest' }), config.ingest)
  const leaderboard: LeaderboardStore = config.redisUrl
    ? new RedisLeaderboard(config.redisUrl)
    : new MemoryLeaderboard()
  const outputs = new OutputEngine(db, leaderboard, { publish }, metrics, log.child({ stage: 'outputs' }))
  ingest.onCommitted((batch) => outputs.onCommitted(batch))
  const sync = new SyncService(db, { publish }, metrics, log.child({ stage: 'sync' }), () => timescale)

  const refuse = (
    listener: string,
    reason: string,
    code: 2 | 3 | 4 | 5,
    clientId: string,
    done: (e: AuthenticateError, ok: null) => void,
  ) => {
    metrics.authRefusals.inc({ reason, listener })
    log.info({ listener, reason, clientId }, 'connection refused')
    done(authError(reason, code), null)
  }

  broker = await Aedes.createBroker({
    // concurrency 0: no bounded mq queue, which avoids mqemitter's stack-overflow crash with slow subscribers.
    concurrency: 0,
    connectTimeout: config.limits.connectTimeoutMs,
    drainTimeout: config.limits.drainTimeoutMs,
    maxClientsIdLength: config.limits.maxClientIdLength,

    authenticate(client, _username, password, done) {
      const info = connInfo(client.conn)
      if (!info) {
        done(authError('unknown transport', 5), null)
        return
      }
      const { listener } = info
      void (async () => {
        let p: Principal
        if (info.peerCert) {
          const deviceId = deviceIdFromCert(info.peerCert)
          if (!deviceId) return refuse(listener, 'no_device_id_in_certificate', 5, client.id, done)
          const fp = info.peerCert.fingerprint256
          // Batched with the other connects in flight and cached briefly (revocation bound: CertificateLookups).
          const rec = await lookups.certificates.lookup(deviceId, fp)
          if (!rec) return refuse(listener, 'unknown_device', 5, client.id, done)
          if (rec.revoked || rec.fingerprintRevoked) return refuse(listener, 'revoked', 5, client.id, done)
          if (rec.fingerprint !== fp) return refuse(listener, 'fingerprint_mismatch', 5, client.id, done)
          p = { role: 'device', userId: rec.userId, deviceId, deviceKey: rec.deviceKey, events: [] }
        } else if (info.upgradePrincipal) {
          p = info.upgradePrincipal
        } else if (password && password.length > 0) {
          try {
            p = await tokens.verify(password.toString('utf8'))
          } catch (err) {
            if (err instanceof TokenError) {
              return refuse(listener, `token_${err.reason}`, err.reason === 'bad_role' ? 5 : 4, client.id, done)
            }
            throw err
          }
        } else {
          return refuse(listener, 'no_credentials', 4, client.id, done)
        }
        if (!clientIdAllowed(p, client.id, config.limits.maxClientIdLength)) {
          return refuse(listener, 'bad_client_id', 2, client.id, done)
        }
        principals.set(client, p)
        metrics.connects.inc({ role: p.role, listener })
        done(null, true)
      })().catch((err: Error) => {
        // The registry is unreachable: "server unavailable", the client retries.
        log.warn({ err: err.message }, 'authentication failed for lack of the database')
        refuse(listener, 'registry_unavailable', 3, client.id, done)
      })
    },

    authorizePublish(client, packet, done) {
      const p = client ? principals.get(client) : undefined
      if (!client || !p) {
        // Wills left by a dead broker node (client null) and unknown clients publish nothing.
        done(new Error('not authorized'))
        return
      }
      metrics.packetsIn.inc({ qos: String(packet.qos) })
      canPublish(p, packet.topic, lookups)
        .then(async (decision) => {
          if (!decision.ok) {
            metrics.aclRefusals.inc({ action: 'publish', role: p.role })
            log.info({ clientId: client.id, topic: packet.topic, reason: decision.reason }, 'publish refused')
            done(new Error(`publish to ${packet.topic} refused: ${decision.reason}`))
            return
          }
          const ref = decision.ref
          if (ref?.kind === 'user' && ref.leaf === 'sync/request') {
            // Acked at once; the answer comes on users/{uid}/sync/response.
            done()
            void sync.handle(ref.userId, packet.payload as Buffer)
            return
          }
          // Only inbound device topics are consumed; an admin's config publish is routed (and retained) as sent.
          if (ref?.kind !== 'device' || (ref.leaf !== 'readings' && ref.leaf !== 'status')) {
            done()
            return
          }
          // Inbound telemetry is consumed here, never kept as a retained message, and not routed (see below).
          packet.retain = false
          consumed.add(packet)
          let src: IngestSource
          if (p.role === 'device' && p.deviceKey !== null && p.userId !== null) {
            src = { deviceId: ref.deviceId, deviceKey: p.deviceKey, userId: p.userId }
          } else {
            const owner = await lookups.deviceOwner(ref.deviceId)
            if (!owner) {
              metrics.aclRefusals.inc({ action: 'publish', role: p.role })
              done(new Error(`device ${ref.deviceId} is not registered`))
              return
            }
            src = { deviceId: ref.deviceId, deviceKey: owner.deviceKey, userId: owner.userId }
          }
          if (ref.leaf === 'readings') ingest.handleReadings(src, packet.payload as Buffer, packet.qos, done)
          else ingest.handleStatus(src, packet.payload as Buffer, packet.qos, done)
        })
        .catch((err: Error) => {
          log.warn({ err: err.message }, 'publish authorization failed')
          done(new Error('publish authorization unavailable'))
        })
    },

    authorizeSubscribe(client, sub, done) {
      const p = principals.get(client)
      if (!p) {
        done(null, null)
        return
      }
      canSubscribe(p, sub.topic, lookups).then(
        (decision) => {
          if (decision.ok) {
            // The decision was async: a client that has gone meanwhile must not keep routing on for good.
            if (p.role === 'admin' && filterMayMatchInbound(sub.topic) && !client.closed) tapping.add(client)
            done(null, sub)
            return
          }
          metrics.aclRefusals.inc({ action: 'subscribe', role: p.role })
          log.info({ clientId: client.id, topic: sub.topic, reason: decision.reason }, 'subscribe refused')
          done(null, null) // SUBACK 0x80 for this filter; the connection stays
        },
        () => done(null, null),
      )
    },

    authorizeForward(_client, packet) {
      metrics.packetsOut.inc()
      return packet
    },
  })

  broker.on('client', (client: Client) => {
    const p = principals.get(client)
    if (p) metrics.connections.inc({ role: p.role })
  })
  broker.on('clientDisconnect', (client: Client) => {
    tapping.delete(client)
    const p = principals.get(client)
    if (p) metrics.connections.dec({ role: p.role })
  })
  broker.on('clientError', (_client: Client, err: Error) => {
    metrics.clientErrors.inc({ kind: 'client' })
    log.debug({ err: err.message }, 'client error')
  })
  broker.on('connectionError', (_client: Client, err: Error) => {
    metrics.clientErrors.inc({ kind: 'connection' })
    log.debug({ err: err.message }, 'connection error')
  })
  // An unhandled 'error' event would kill the process; persistence errors must not.
  ;(broker as unknown as EventEmitter).on('error', (err: Error) => log.error({ err: err.message }, 'broker error'))

  const aedes = broker
  // Aedes' default in-memory persistence (the only one configured here): index its retained messages by topic.
  indexRetained((aedes as unknown as { persistence: RetainedPersistence }).persistence)
  type RoutePublish = (packet: object, client: Client | null, done?: (err?: Error | null) => void) => void
  const internals = aedes as unknown as { publish: RoutePublish }
  const route: RoutePublish = internals.publish.bind(aedes)
  internals.publish = (packet, client, done) => {
    if (tapping.size === 0 && consumed.has(packet)) {
      done?.(null)
      return
    }
    route(packet, client, done)
  }
  // Aedes keeps connected clients by id at runtime; its types leave the map out.
  const clientsById = () => (aedes as unknown as { clients: Record<string, Client | undefined> }).clients
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
    if (writerDb !== db) await writerDb.close()
    await db.close()
    throw err
  }
  if (db.kind === 'embedded') updateEmbeddedLock(config.dataDir, { httpPort: ports.http, host: config.host })
  outputs.start()
  ready = true
  log.info({ ports, store: db.kind }, 'pulsegate listening')

  const stop = () => {
    stopping ??= (async () => {
      log.info('shutting down: no new connections; finishing in-flight commits')
      for (const s of servers) s.close()
      // In-flight QoS 1 batches get their PUBACK when their commit lands; new ones are refused (devices retry).
      const drained = await writer.close(config.limits.shutdownTimeoutMs)
      if (!drained)
        log.warn({ queuedRows: writer.queuedRows }, 'shutdown timeout: unacknowledged rows left (devices will resend)')
      await new Promise<void>((r) => aedes.close(() => r()))
      httpServer.closeAllConnections()
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
    leaderboard,
    timescale,
    ports,
    publish,
    principalOf: (clientId) => {
      const c = clientsById()[clientId]
      return c ? principals.get(c) : undefined
    },
    stop,
  }
}

// The Aedes hooks without a socket: Client-shaped objects whose `conn` carries the connection info the transport
// attaches, the real ACL, real JWTs (HS256) and real certificates. The registry look-ups are an in-memory table in
// the shape of CachedLookups (a cache double, not a database one); the pipeline and sync entries record what they
// are handed, which is what these hooks decide. The whole path over MQTT is covered by the integration suites.
import { X509Certificate } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import type { PeerCertificate } from 'node:tls'
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket } from 'aedes'
import { type Counter, type Gauge, Registry } from 'prom-client'
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest'
import { loadConfig } from '../../broker.config.js'
import { createAuthenticate } from '../../src/hooks/authenticate.js'
import { type ConsentEntry, createAuthorizePublish, type IngestEntry } from '../../src/hooks/authorize-publish.js'
import { createAuthorizeSubscribe } from '../../src/hooks/authorize-subscribe.js'
import { watchClientEvents } from '../../src/hooks/client-events.js'
import { ConsumedRouting } from '../../src/hooks/consumed-routing.js'
import { createAuthorizeForward } from '../../src/hooks/forward.js'
import type { Principals } from '../../src/hooks/types.js'
import type { AclLookups } from '../../src/identity/acl.js'
import { generateCa, issueCertWithCa } from '../../src/identity/pki.js'
import type { Principal } from '../../src/identity/principal.js'
import { Tokens } from '../../src/identity/tokens.js'
import { createLogger } from '../../src/log.js'
import { createMetrics, type Metrics } from '../../src/metrics.js'
import type { AuditEntry, AuditSink } from '../../src/ops/audit-types.js'
import { ConsentPayloadError } from '../../src/ops/consent-model.js'
import { ErasureGuard } from '../../src/ops/erasure-guard.js'
import type { IngestSource } from '../../src/pipeline/ingest.js'
import type { CertificateRecord, DeviceRecord } from '../../src/store/registry.js'
import { type ConnInfo, setConnInfo } from '../../src/transport/connection.js'

const SECRET = 'test-secret-0123456789abcdef'
const MAX_CLIENT_ID = 128
const log = createLogger('silent')
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-hooks-'))
const tokens = new Tokens(loadConfig({ dataDir, jwt: { secret: SECRET } }, {}))
/** Same issuer and audience, another secret: its tokens fail the signature check. */
const strangerTokens = new Tokens(loadConfig({ dataDir, jwt: { secret: 'another-secret-0123456789abcdef' } }, {}))

afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }))

/** The registry as CachedLookups answers it, from a table held in memory. */
class TableLookups implements AclLookups {
  readonly devices = new Map<string, DeviceRecord>()
  readonly revokedFingerprints = new Set<string>()
  readonly participants = new Set<string>()
  readonly publicEvents = new Set<string>()
  unavailable = false

  readonly certificates = {
    lookup: async (deviceId: string, fingerprint: string): Promise<CertificateRecord | null> => {
      this.check()
      const d = this.devices.get(deviceId)
      return d ? { ...d, fingerprintRevoked: this.revokedFingerprints.has(fingerprint) } : null
    },
  }

  async deviceOwner(deviceId: string) {
    this.check()
    const d = this.devices.get(deviceId)
    return d && !d.revoked ? { userId: d.userId, deviceKey: d.deviceKey } : null
  }
  async isParticipant(eventId: string, userId: string) {
    this.check()
    return this.participants.has(`${eventId}/${userId}`)
  }
  async eventIsPublic(eventId: string) {
    this.check()
    return this.publicEvents.has(eventId)
  }
  private check(): void {
    if (this.unavailable) throw new Error('connect ECONNREFUSED 127.0.0.1:5432')
  }
}

/** A Client as the hooks see it: an id, and the stream the transport attached its ConnInfo to. */
function fakeClient(id: string, info: Partial<ConnInfo> | null = {}, closed = false): Client {
  const conn = new PassThrough()
  if (info) {
    setConnInfo(conn, { listener: 'mqtt', remoteAddress: '127.0.0.1', peerCert: null, upgradePrincipal: null, ...info })
  }
  return { id, conn, closed } as unknown as Client
}

/** What the TLS layer reports for a verified client certificate, read from the real certificate. */
function peerCertOf(certPem: string): PeerCertificate {
  const x = new X509Certificate(certPem)
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(x.subject)?.[1]
  return {
    subject: cn ? { CN: cn } : {},
    subjectaltname: x.subjectAltName,
    fingerprint256: x.fingerprint256,
  } as unknown as PeerCertificate
}

async function count(metric: Counter | Gauge, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await metric.get()
  const hit = values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val))
  return hit?.value ?? 0
}

const principal = (o: Partial<Principal> & Pick<Principal, 'role'>): Principal => ({
  userId: null,
  deviceId: null,
  deviceKey: null,
  events: [],
  ...o,
})

function packet(topic: string, payload: string, qos: 0 | 1 = 1, retain = false): PublishPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(payload), qos, retain, dup: false, messageId: 1 }
}

let metrics: Metrics
let lookups: TableLookups
let principals: Principals
let routing: ConsumedRouting
/** what the hooks recorded in the audit log */
let audited: AuditEntry[]
const auditSink: AuditSink = {
  async record(e) {
    audited.push(e)
  },
}
/** The consent service's entry: refuses payloads without a purpose the way ConsentService does, else echoes. */
const consentEntry: ConsentEntry = {
  async handleAppPublish(userId, payload) {
    const body = JSON.parse(payload.toString()) as { purpose?: string; granted?: boolean; fail?: boolean }
    if (body.fail) throw new Error('connection terminated')
    if (!body.purpose) throw new ConsentPayloadError('bad_shape', 'consent payload refused: name a purpose')
    const consents = {
      leaderboard: false,
      live_sharing: false,
      medical_alerts: true,
      recommendations: false,
      research: false,
    }
    return { userId, consents: { ...consents, [body.purpose]: body.granted === true }, version: 1 }
  },
}
/** what the hooks published themselves (the consent state) */
let published: { topic: string; payload: string; qos: number; retain: boolean }[]

beforeEach(() => {
  metrics = createMetrics()
  lookups = new TableLookups()
  principals = new WeakMap()
  routing = new ConsumedRouting()
  audited = []
  published = []
})

describe('authenticate', () => {
  let ca: { certPem: string; keyPem: string }
  let cert: { certPem: string; fingerprint256: string }
  beforeAll(async () => {
    ca = await generateCa('pulsegate test CA')
    cert = await issueCertWithCa(ca.certPem, ca.keyPem, 'tracker-1')
  })

  /** Runs the hook; resolves with the CONNACK it decided (0 accepted, else the return code) and the reason. */
  function connect(client: Client, password?: string): Promise<{ code: number; reason?: string }> {
    const hook = createAuthenticate({ lookups, tokens, principals, metrics, log, maxClientIdLength: MAX_CLIENT_ID })
    return new Promise((resolve) => {
      hook(client, undefined, password === undefined ? undefined : Buffer.from(password), (err, ok) => {
        if (err) resolve({ code: (err as AuthenticateError).returnCode, reason: err.message })
        else resolve({ code: ok ? 0 : -1 })
      })
    })
  }

  it('accepts a token client on its own client id and keeps its principal', async () => {
    const client = fakeClient('app:alice:phone')
    const jwt = await tokens.sign({ sub: 'alice', role: 'app', ttl: 60 })
    expect(await connect(client, jwt)).toEqual({ code: 0 })
    expect(principals.get(client)).toEqual({
      role: 'app',
      userId: 'alice',
      deviceId: null,
      deviceKey: null,
      events: [],
      issuedAt: expect.any(Number),
    })
    expect(await count(metrics.connects, { role: 'app', listener: 'mqtt' })).toBe(1)
  })

  it('refuses a bad token with 4 and a bad role with 5', async () => {
    const forged = await strangerTokens.sign({ sub: 'alice', role: 'app', ttl: 60 })
    expect(await connect(fakeClient('app:alice'), forged)).toEqual({ code: 4, reason: 'token_bad_signature' })
    const expired = await tokens.sign({ sub: 'alice', role: 'app', ttl: -60 })
    expect(await connect(fakeClient('app:alice'), expired)).toEqual({ code: 4, reason: 'token_expired' })
    expect(await connect(fakeClient('app:alice'), 'not-a-jwt')).toEqual({ code: 4, reason: 'token_malformed' })
    const deviceRole = await tokens.sign({ sub: 'alice', role: 'device', ttl: 60 })
    expect(await connect(fakeClient('device:alice'), deviceRole)).toEqual({ code: 5, reason: 'token_bad_role' })
    expect(await connect(fakeClient('app:alice'))).toEqual({ code: 4, reason: 'no_credentials' })
    expect(await count(metrics.authRefusals, { reason: 'token_bad_signature', listener: 'mqtt' })).toBe(1)
    expect(await count(metrics.connects)).toBe(0)
  })

  it("refuses a valid token on another principal's client id with 2", async () => {
    const jwt = await tokens.sign({ sub: 'alice', role: 'app', ttl: 60 })
    const client = fakeClient('app:bob')
    expect(await connect(client, jwt)).toEqual({ code: 2, reason: 'bad_client_id' })
    expect(await connect(fakeClient('bridge:alice'), jwt)).toEqual({ code: 2, reason: 'bad_client_id' })
    expect(principals.has(client)).toBe(false)
  })

  it('takes the principal verified at the WebSocket upgrade, and refuses a stream the transport does not know', async () => {
    const p = principal({ role: 'bridge', userId: 'alice' })
    const client = fakeClient('bridge:alice', { listener: 'ws', upgradePrincipal: p })
    expect(await connect(client)).toEqual({ code: 0 })
    expect(principals.get(client)).toBe(p)
    expect(await connect(fakeClient('bridge:alice', null))).toEqual({ code: 5, reason: 'unknown transport' })
  })

  it('accepts a registered device by its certificate, as the device principal', async () => {
    lookups.devices.set('tracker-1', {
      deviceKey: 7,
      deviceId: 'tracker-1',
      userId: 'alice',
      fingerprint: cert.fingerprint256,
      revoked: false,
    })
    const client = fakeClient('tracker-1', { listener: 'mqtts', peerCert: peerCertOf(cert.certPem) })
    expect(await connect(client)).toEqual({ code: 0 })
    expect(principals.get(client)).toEqual({
      role: 'device',
      userId: 'alice',
      deviceId: 'tracker-1',
      deviceKey: 7,
      events: [],
    })
    // A device's client id is its device id.
    const other = fakeClient('tracker-2', { listener: 'mqtts', peerCert: peerCertOf(cert.certPem) })
    expect(await connect(other)).toEqual({ code: 2, reason: 'bad_client_id' })
  })

  it('refuses unknown, revoked and mismatched device certificates with 5', async () => {
    const peer = () => fakeClient('tracker-1', { listener: 'mqtts', peerCert: peerCertOf(cert.certPem) })
    expect(await connect(peer())).toEqual({ code: 5, reason: 'unknown_device' })

    const record = { deviceKey: 7, deviceId: 'tracker-1', userId: 'alice', fingerprint: cert.fingerprint256 }
    lookups.devices.set('tracker-1', { ...record, revoked: true })
    expect(await connect(peer())).toEqual({ code: 5, reason: 'revoked' })

    lookups.devices.set('tracker-1', { ...record, revoked: false })
    lookups.revokedFingerprints.add(cert.fingerprint256)
    expect(await connect(peer())).toEqual({ code: 5, reason: 'revoked' })
    lookups.revokedFingerprints.clear()

    // Re-registered with a new certificate: the old one, though signed by the CA, no longer gets in.
    const renewed = await issueCertWithCa(ca.certPem, ca.keyPem, 'tracker-1')
    lookups.devices.set('tracker-1', { ...record, fingerprint: renewed.fingerprint256, revoked: false })
    expect(await connect(peer())).toEqual({ code: 5, reason: 'fingerprint_mismatch' })

    // A certificate naming no valid device id (the CA's own: CN with spaces, no device SAN).
    const noId = fakeClient('tracker-1', { listener: 'mqtts', peerCert: peerCertOf(ca.certPem) })
    expect(await connect(noId)).toEqual({ code: 5, reason: 'no_device_id_in_certificate' })
    expect(await count(metrics.authRefusals, { reason: 'revoked', listener: 'mqtts' })).toBe(2)
  })

  it('answers 3 (server unavailable) when the registry cannot be asked', async () => {
    lookups.unavailable = true
    const client = fakeClient('tracker-1', { listener: 'mqtts', peerCert: peerCertOf(cert.certPem) })
    expect(await connect(client)).toEqual({ code: 3, reason: 'registry_unavailable' })
  })
})

interface Handed {
  kind: 'readings' | 'status'
  src: IngestSource
  payload: string
  qos: number
}

describe('authorizePublish', () => {
  let handed: Handed[]
  let syncRequests: { userId: string; payload: string }[]
  /** The pipeline's entry points, recording each hand-off and committing at once. */
  const ingest: IngestEntry = {
    handleReadings: (src, payload, qos, done) => {
      handed.push({ kind: 'readings', src, payload: payload.toString(), qos })
      done()
    },
    handleStatus: (src, payload, qos, done) => {
      handed.push({ kind: 'status', src, payload: payload.toString(), qos })
      done()
    },
  }
  /** The sync service: records the request; its answer never comes, so an ack can only be the hook's own. */
  const sync = {
    handle: (userId: string, payload: Buffer) => {
      syncRequests.push({ userId, payload: payload.toString() })
      return new Promise<void>(() => {})
    },
  }
  /** The preferences service: records the message; `storeDown` makes the merge fail as with the database gone. */
  let prefsMessages: { userId: string; payload: string }[]
  let storeDown = false
  const preferences = {
    handle: async (userId: string, payload: Buffer) => {
      if (storeDown) throw new Error('connect ECONNREFUSED 127.0.0.1:5432')
      prefsMessages.push({ userId, payload: payload.toString() })
    },
  }
  beforeEach(() => {
    handed = []
    syncRequests = []
    prefsMessages = []
    storeDown = false
    lookups.devices.set('tracker-1', {
      deviceKey: 7,
      deviceId: 'tracker-1',
      userId: 'alice',
      fingerprint: 'AA',
      revoked: false,
    })
  })

  function publish(client: Client | null, pkt: PublishPacket): Promise<Error | null> {
    return publisher()(client, pkt)
  }
  /** One hook instance (it keeps per-connection state), optionally with an erasure guard. */
  function publisher(erasure?: ErasureGuard): (client: Client | null, pkt: PublishPacket) => Promise<Error | null> {
    const hook = createAuthorizePublish({
      lookups,
      principals,
      ingest,
      sync,
      consent: consentEntry,
      preferences,
      audit: auditSink,
      publish: (topic, payload, qos, retain) => {
        published.push({ topic, payload, qos, retain })
      },
      routing,
      metrics,
      log,
      ...(erasure ? { erasure } : {}),
    })
    return (client, pkt) => new Promise((resolve) => hook(client, pkt, (err) => resolve(err ?? null)))
  }
  function as(p: Principal, id: string): Client {
    const c = fakeClient(id)
    principals.set(c, p)
    return c
  }
  const tracker = principal({ role: 'device', userId: 'alice', deviceId: 'tracker-1', deviceKey: 7 })

  it('refuses with an error (Aedes closes the connection) and counts it', async () => {
    const c = as(tracker, 'tracker-1')
    const err = await publish(c, packet('devices/tracker-2/readings', '{}'))
    expect(err?.message).toBe('publish to devices/tracker-2/readings refused: not_your_device')
    expect(await count(metrics.aclRefusals, { action: 'publish', role: 'device' })).toBe(1)
    expect((await publish(c, packet('$SYS/x', '{}')))?.message).toMatch(/reserved_topic/)
    expect((await publish(null, packet('devices/tracker-1/readings', '{}')))?.message).toBe('not authorized')
    expect((await publish(fakeClient('tracker-1'), packet('devices/tracker-1/readings', '{}')))?.message).toBe(
      'not authorized',
    )
    expect(handed).toEqual([])
  })

  it('acks a sync request at once and hands it to the sync service once its audit row is written', async () => {
    const c = as(principal({ role: 'app', userId: 'alice' }), 'app:alice')
    expect(await publish(c, packet('users/alice/sync/request', '{"since":0}'))).toBeNull()
    // the audit append is asynchronous: the answer follows it
    await vi.waitFor(() => expect(syncRequests).toEqual([{ userId: 'alice', payload: '{"since":0}' }]))
    expect(audited).toEqual([
      { actor: { role: 'app', id: 'alice' }, action: 'sync.request', subject: 'alice', purpose: null },
    ])
    expect((await publish(c, packet('users/bob/sync/request', '{}')))?.message).toMatch(/not_your_user/)
  })

  it("commits an app's consent change, acks it and answers with the retained state; a bad one is acked and changes nothing", async () => {
    const c = as(principal({ role: 'app', userId: 'alice' }), 'app:alice:ph')
    const pkt = packet('users/alice/consent', '{"purpose":"research","granted":true}', 1, true)
    expect(await publish(c, pkt)).toBeNull()
    expect(pkt.retain).toBe(false)
    expect(published).toHaveLength(1)
    expect(published[0]).toMatchObject({ topic: 'users/alice/consent/state', qos: 1, retain: true })
    expect(JSON.parse(published[0]?.payload ?? '{}').consents.research).toBe(true)
    // No negative PUBACK in MQTT 3.1.1: a refused payload is acked, nothing is published.
    expect(await publish(c, packet('users/alice/consent', '{"granted":true}'))).toBeNull()
    expect(published).toHaveLength(1)
    // The store failing is not acked: the app sends it again.
    expect((await publish(c, packet('users/alice/consent', '{"fail":true}')))?.message).toBe(
      'consent store unavailable',
    )
    expect((await publish(c, packet('users/bob/consent', '{"purpose":"research"}')))?.message).toMatch(/not_your_user/)
  })

  it("acks a user's preferences edits once the service has taken them, never as a retained message", async () => {
    const c = as(principal({ role: 'app', userId: 'alice' }), 'app:alice:watch')
    const edits = packet('users/alice/preferences', '{"node":"watch"}', 1, true)
    expect(await publish(c, edits)).toBeNull()
    expect(prefsMessages).toEqual([{ userId: 'alice', payload: '{"node":"watch"}' }])
    expect(edits.retain).toBe(false)
    expect((await publish(c, packet('users/bob/preferences', '{}')))?.message).toMatch(/not_your_user/)
    expect((await publish(c, packet('users/alice/preferences/state', '{}')))?.message).toMatch(/outbound_topic/)
    storeDown = true
    expect((await publish(c, packet('users/alice/preferences', '{}')))?.message).toBe(
      'preferences not stored: database unavailable',
    )
  })

  it("hands a device's readings and status to the pipeline with the device's own source, not retained", async () => {
    const c = as(tracker, 'tracker-1')
    const readings = packet('devices/tracker-1/readings', '{"seq":1}', 1, true)
    expect(await publish(c, readings)).toBeNull()
    expect(await publish(c, packet('devices/tracker-1/status', '{"battery":80}', 0))).toBeNull()
    const src = { deviceId: 'tracker-1', deviceKey: 7, userId: 'alice' }
    expect(handed).toEqual([
      { kind: 'readings', src, payload: '{"seq":1}', qos: 1 },
      { kind: 'status', src, payload: '{"battery":80}', qos: 0 },
    ])
    expect(readings.retain).toBe(false)
    expect(await count(metrics.packetsIn, { qos: '1' })).toBe(1)
  })

  it("refuses a tracker's own readings once its user's erasure began, on a connection whose readings went through", async () => {
    const guard = new ErasureGuard(new Registry())
    const send = publisher(guard)
    const c = as(tracker, 'tracker-1')
    expect(await send(c, packet('devices/tracker-1/readings', '{"seq":1}'))).toBeNull()
    guard.begin('alice', [{ deviceKey: 7, deviceId: 'tracker-1' }], Date.now())
    expect((await send(c, packet('devices/tracker-1/readings', '{"seq":2}')))?.message).toBe(
      'publish to devices/tracker-1/readings refused: the data of its user is being erased',
    )
    // the general path refuses the same way (status), and another device's topic is still not this one's
    expect((await send(c, packet('devices/tracker-1/status', '{}')))?.message).toMatch(/being erased/)
    expect((await send(c, packet('devices/tracker-2/readings', '{}')))?.message).toMatch(/not_your_device/)
    expect(handed).toEqual([
      { kind: 'readings', src: { deviceId: 'tracker-1', deviceKey: 7, userId: 'alice' }, payload: '{"seq":1}', qos: 1 },
    ])
  })

  it("hands a bridge's relayed readings over with the owner's source from the registry", async () => {
    const c = as(principal({ role: 'bridge', userId: 'alice' }), 'bridge:alice')
    expect(await publish(c, packet('devices/tracker-1/readings', '{"seq":2}'))).toBeNull()
    expect(handed).toEqual([
      { kind: 'readings', src: { deviceId: 'tracker-1', deviceKey: 7, userId: 'alice' }, payload: '{"seq":2}', qos: 1 },
    ])
    const bob = as(principal({ role: 'bridge', userId: 'bob' }), 'bridge:bob')
    expect((await publish(bob, packet('devices/tracker-1/readings', '{}')))?.message).toMatch(/not_your_device/)
    expect(handed).toHaveLength(1)
  })

  it("routes an admin's config publish as sent, and refuses its readings for an unregistered device", async () => {
    const admin = as(principal({ role: 'admin', userId: 'ops' }), 'admin:ops')
    const config = packet('devices/tracker-1/config', '{"rate":1}', 1, true)
    expect(await publish(admin, config)).toBeNull()
    expect(config.retain).toBe(true)
    expect(handed).toEqual([])
    const err = await publish(admin, packet('devices/ghost/readings', '{}'))
    expect(err?.message).toBe('device ghost is not registered')
    expect(await count(metrics.aclRefusals, { action: 'publish', role: 'admin' })).toBe(1)
  })

  it('refuses when the registry cannot be asked', async () => {
    lookups.unavailable = true
    const c = as(principal({ role: 'bridge', userId: 'alice' }), 'bridge:alice')
    expect((await publish(c, packet('devices/tracker-1/readings', '{}')))?.message).toBe(
      'publish authorization unavailable',
    )
    expect(handed).toEqual([])
  })
})

describe('authorizeSubscribe', () => {
  /** The preferences service: the grant must wait until the user's state is retained; `fail` as with no database. */
  let retained: string[] = []
  let fail = false
  const preferences = {
    ensureRetained: async (userId: string) => {
      await new Promise((r) => setTimeout(r, 10))
      if (fail) throw new Error('connect ECONNREFUSED 127.0.0.1:5432')
      retained.push(userId)
    },
  }
  beforeEach(() => {
    retained = []
    fail = false
  })
  function subscribe(client: Client, topic: string): Promise<{ err: Error | null; granted: string | null }> {
    const hook = createAuthorizeSubscribe({ lookups, principals, routing, audit: auditSink, preferences, metrics, log })
    return new Promise((resolve) =>
      hook(client, { topic, qos: 1 }, (err, sub) => resolve({ err, granted: sub ? sub.topic : null })),
    )
  }
  function as(p: Principal, id: string, closed = false): Client {
    const c = fakeClient(id, {}, closed)
    principals.set(c, p)
    return c
  }

  it('grants an allowed filter and refuses others with done(null, null), the connection staying', async () => {
    const app = as(principal({ role: 'app', userId: 'alice' }), 'app:alice')
    expect(await subscribe(app, 'users/alice/alerts')).toEqual({ err: null, granted: 'users/alice/alerts' })
    expect(await subscribe(app, 'users/bob/alerts')).toEqual({ err: null, granted: null })
    expect(await subscribe(app, 'users/+/alerts')).toEqual({ err: null, granted: null })
    expect(await subscribe(app, 'devices/tracker-1/readings')).toEqual({ err: null, granted: null })
    expect(await count(metrics.aclRefusals, { action: 'subscribe', role: 'app' })).toBe(3)
    expect(await subscribe(fakeClient('app:carol'), 'users/carol/alerts')).toEqual({ err: null, granted: null })
    lookups.unavailable = true
    expect(await subscribe(app, 'events/race-1/leaderboard')).toEqual({ err: null, granted: null })
    expect(routing.taps).toBe(0)
  })

  it("grants users/{uid}/preferences/state only after the user's state is retained; never the inbound topic", async () => {
    const app = as(principal({ role: 'app', userId: 'alice' }), 'app:alice')
    const state = 'users/alice/preferences/state'
    expect(await subscribe(app, state)).toEqual({ err: null, granted: state })
    expect(retained).toEqual(['alice'])
    expect(await subscribe(app, 'users/alice/preferences')).toEqual({ err: null, granted: null })
    expect(await subscribe(app, 'users/bob/preferences/state')).toEqual({ err: null, granted: null })
    fail = true
    expect(await subscribe(app, state)).toEqual({ err: null, granted: state })
    expect(retained).toEqual(['alice'])
  })

  it('registers an admin whose filter can match inbound telemetry as a tap', async () => {
    const admin = as(principal({ role: 'admin', userId: 'ops' }), 'admin:ops')
    expect(await subscribe(admin, 'users/+/alerts')).toEqual({ err: null, granted: 'users/+/alerts' })
    expect(routing.taps).toBe(0)
    expect(await subscribe(admin, 'devices/+/readings')).toEqual({ err: null, granted: 'devices/+/readings' })
    expect(routing.taps).toBe(1)
    // Gone while the decision was out: granted (Aedes drops it), but no tap is left behind.
    const gone = as(principal({ role: 'admin', userId: 'ops' }), 'admin:ops:2', true)
    expect(await subscribe(gone, '#')).toEqual({ err: null, granted: '#' })
    expect(routing.taps).toBe(1)
    // Each of them sees other people's data: audited.
    expect(audited.map((e) => [e.action, e.details?.topic, e.actor])).toEqual([
      ['subscribe.admin', 'users/+/alerts', { role: 'admin', id: 'ops' }],
      ['tap.readings', 'devices/+/readings', { role: 'admin', id: 'ops' }],
      ['tap.readings', '#', { role: 'admin', id: 'ops' }],
    ])
  })

  it("audits a medic's subscriptions to its event's topics, not an app's to its own", async () => {
    const medic = as(principal({ role: 'medic', userId: 'doc', events: ['race-1'] }), 'medic:doc')
    expect(await subscribe(medic, 'events/race-1/alerts')).toEqual({ err: null, granted: 'events/race-1/alerts' })
    const app = as(principal({ role: 'app', userId: 'alice' }), 'app:alice')
    expect(await subscribe(app, 'users/alice/alerts')).toEqual({ err: null, granted: 'users/alice/alerts' })
    expect(audited).toEqual([
      {
        actor: { role: 'medic', id: 'doc' },
        action: 'subscribe.event',
        subject: null,
        purpose: null,
        details: { topic: 'events/race-1/alerts' },
      },
    ])
  })
})

describe('authorizeForward', () => {
  it('counts each delivery and passes the packet on unchanged', async () => {
    const forward = createAuthorizeForward({ metrics })
    const pkt = packet('users/alice/alerts', '{}') as AedesPublishPacket
    expect(forward(fakeClient('app:alice'), pkt)).toBe(pkt)
    forward(fakeClient('app:bob'), pkt)
    expect(await count(metrics.packetsOut)).toBe(2)
  })
})

describe('consumed routing on a real Aedes (no listener)', () => {
  let aedes: Aedes
  let delivered: string[]
  beforeEach(async () => {
    aedes = await Aedes.createBroker()
    routing.install(aedes)
    watchClientEvents(aedes, { principals, routing, metrics, log })
    delivered = []
    await new Promise<void>((r) =>
      aedes.subscribe(
        'devices/+/readings',
        (p, cb) => {
          delivered.push(p.payload.toString())
          cb()
        },
        r,
      ),
    )
  })
  afterEach(() => new Promise<void>((r) => aedes.close(() => r())))

  /** What Aedes' PUBLISH handler does once authorizePublish has passed: route(packet, client, done). */
  function route(pkt: PublishPacket): Promise<void> {
    const internals = aedes as unknown as { publish(p: object, c: Client | null, d: (e?: Error | null) => void): void }
    return new Promise((resolve, reject) => internals.publish(pkt, null, (e) => (e ? reject(e) : resolve())))
  }
  /** A packet nobody consumed, routed after `pkt`: once it arrives, anything routed before it has too. */
  async function flush(label: string): Promise<void> {
    await route(packet('devices/marker/readings', label, 0))
    // vi.waitFor gives up after 1 s by default: a bound a stalled process on a loaded machine can pass.
    await vi.waitFor(() => expect(delivered.at(-1)).toBe(label), { timeout: 10_000 })
  }

  it('skips consumed packets while no tap is connected, routes them while one is', async () => {
    const consumed = packet('devices/tracker-1/readings', 'consumed-1', 0)
    routing.consume(consumed)
    await route(consumed)
    await flush('m1')
    expect(delivered).toEqual(['m1'])

    const tap = fakeClient('admin:ops')
    routing.tap(tap)
    const seen = packet('devices/tracker-1/readings', 'consumed-2', 0)
    routing.consume(seen)
    await route(seen)
    await flush('m2')
    expect(delivered).toEqual(['m1', 'consumed-2', 'm2'])

    // The tap's disconnect (the broker's clientDisconnect event) ends the routing.
    aedes.emit('clientDisconnect', tap)
    expect(routing.taps).toBe(0)
    const after = packet('devices/tracker-1/readings', 'consumed-3', 0)
    routing.consume(after)
    await route(after)
    await flush('m3')
    expect(delivered).toEqual(['m1', 'consumed-2', 'm2', 'm3'])
  })

  it('does not route the readings authorizePublish handed to the pipeline', async () => {
    const ingest: IngestEntry = {
      handleReadings: (_s, _p, _q, done) => done(),
      handleStatus: (_s, _p, _q, done) => done(),
    }
    const sync = { handle: async () => {} }
    const preferences = { handle: async () => {} }
    const hook = createAuthorizePublish({
      lookups,
      principals,
      ingest,
      sync,
      consent: consentEntry,
      preferences,
      audit: auditSink,
      publish: (topic, payload, qos, retain) => {
        published.push({ topic, payload, qos, retain })
      },
      routing,
      metrics,
      log,
    })
    const tracker = fakeClient('tracker-1')
    principals.set(tracker, principal({ role: 'device', userId: 'alice', deviceId: 'tracker-1', deviceKey: 7 }))
    const readings = packet('devices/tracker-1/readings', 'from-tracker', 0)
    await new Promise<void>((resolve, reject) => hook(tracker, readings, (e) => (e ? reject(e) : resolve())))
    await route(readings)
    await flush('m4')
    expect(delivered).toEqual(['m4'])
  })
})

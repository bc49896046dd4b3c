// Who may connect: device certificates over mutual TLS, JWTs over TCP and WebSocket. Real TLS, real tokens.
import fs from 'node:fs'
import path from 'node:path'
import tls from 'node:tls'
import { SignJWT } from 'jose'
import mqtt from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import { generateCa, issueCertWithCa, issueDeviceCert, pkiPaths } from '../../src/identity/pki.js'
import {
  connackCode,
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

const SECRET = 'test-secret-0123456789abcdef'
/** A token made by hand, to vary exactly one thing the broker must check. */
function forge(
  o: { role?: string; sub?: string; aud?: string; secret?: string; exp?: number | string; iat?: number } = {},
) {
  const jwt = new SignJWT({ role: o.role ?? 'app' })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(o.sub ?? 'alice')
    .setIssuer('pulsegate')
    .setAudience(o.aud ?? 'pulsegate')
    .setExpirationTime(o.exp ?? '1h')
  if (o.iat !== undefined) jwt.setIssuedAt(o.iat)
  return jwt.sign(new TextEncoder().encode(o.secret ?? SECRET))
}

let tb: TestBroker
let dev: DeviceCreds

beforeAll(async () => {
  tb = await startTestBroker('postgres', { mqttsTokenEnabled: true })
  dev = await provisionDevice(tb, 'tracker-1', 'alice')
})
afterAll(async () => {
  await tb?.stop()
})

/** A TLS handshake that must fail before MQTT: resolves with the error text. */
function handshakeFails(opts: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({
      host: '127.0.0.1',
      port: tb.pg.ports.mqtts!,
      servername: 'localhost',
      ca: tb.ca,
      ...opts,
    })
    sock.on('error', (err) => resolve(err.message))
    sock.on('secureConnect', () => {
      // TLS 1.3 reports the server's refusal of the client certificate after the handshake: read to see it.
      sock.on('close', () => resolve('closed by server'))
      sock.on('data', () => reject(new Error('server talked to an unauthenticated client')))
      sock.write(Buffer.from([0x10, 0x00]))
    })
  })
}

describe('device certificates (mTLS)', () => {
  it('a registered device with a valid certificate connects and is a device', async () => {
    const c = await connectDevice(tb, dev)
    expect(c.connected).toBe(true)
    expect(tb.pg.principalOf('tracker-1')).toMatchObject({ role: 'device', deviceId: 'tracker-1', userId: 'alice' })
    await c.endAsync()
  })

  it('no client certificate: refused in the TLS handshake', async () => {
    expect(await handshakeFails({})).toMatch(/certificate|closed|alert/i)
  })

  it('a certificate from another CA: refused in the handshake', async () => {
    const foreign = await generateCa('evil CA')
    const c = await issueCertWithCa(foreign.certPem, foreign.keyPem, 'tracker-1')
    expect(await handshakeFails({ cert: c.certPem, key: c.keyPem })).toMatch(/unknown ca|certificate|closed|alert/i)
  })

  it('an expired certificate: refused in the handshake', async () => {
    const p = pkiPaths(path.join(tb.dataDir, 'pki'))
    const c = await issueCertWithCa(fs.readFileSync(p.caCert, 'utf8'), fs.readFileSync(p.caKey, 'utf8'), 'tracker-1', {
      notBefore: new Date(Date.now() - 10 * 86400_000),
      notAfter: new Date(Date.now() - 86400_000),
    })
    expect(await handshakeFails({ cert: c.certPem, key: c.keyPem })).toMatch(/expired|certificate|closed|alert/i)
    const metrics = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_auth_refusals_total')
    expect(metrics).toMatch(/listener="mqtts"/)
  })

  it('a valid certificate of an unregistered device: CONNACK 5', async () => {
    const issued = await issueDeviceCert(path.join(tb.dataDir, 'pki'), 'stranger-1')
    expect(
      await connackCode(connectDevice(tb, { deviceId: 'stranger-1', cert: issued.certPem, key: issued.keyPem })),
    ).toBe(5)
  })

  it('a certificate whose fingerprint is not the registered one: CONNACK 5', async () => {
    const d = await provisionDevice(tb, 'tracker-2', 'alice')
    // A second certificate for the same id, never registered (e.g. made with a stolen CA key copy).
    const p = pkiPaths(path.join(tb.dataDir, 'pki'))
    const other = await issueCertWithCa(
      fs.readFileSync(p.caCert, 'utf8'),
      fs.readFileSync(p.caKey, 'utf8'),
      'tracker-2',
    )
    expect(await connackCode(connectDevice(tb, { ...d, cert: other.certPem, key: other.keyPem }))).toBe(5)
    expect(await connackCode(connectDevice(tb, d))).toBe(0)
  })

  it('a revoked certificate: CONNACK 5, and a connected device is cut off', async () => {
    const d = await provisionDevice(tb, 'tracker-3', 'bob')
    const c = await connectDevice(tb, d)
    const closed = new Promise<void>((r) => c.once('close', () => r()))
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'revokeDevice', deviceId: 'tracker-3' }),
    })
    expect(res.status).toBe(200)
    await closed
    expect(await connackCode(connectDevice(tb, d))).toBe(5)
  })

  it('client id must be the device id: CONNACK 2', async () => {
    expect(await connackCode(connectDevice(tb, dev, { clientId: 'tracker-9' }))).toBe(2)
  })
})

describe('token clients over TLS without a client certificate (mqttsTokenEnabled)', () => {
  const refusals = async (reason: string) =>
    metricValue(
      await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_auth_refusals_total'),
      'pulsegate_auth_refusals_total',
      { reason, listener: 'mqtts-token' },
    )

  it('a bridge token over TLS connects as a bridge, on the token listener', async () => {
    const c = await connectWithToken(tb, await token(tb, 'alice', 'bridge'), 'bridge:alice:tls', 'tls')
    expect(tb.pg.principalOf('bridge:alice:tls')).toMatchObject({ role: 'bridge', userId: 'alice', deviceId: null })
    const connects = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_connects_total')
    expect(metricValue(connects, 'pulsegate_connects_total', { role: 'bridge', listener: 'mqtts-token' })).toBe(1)
    await c.endAsync()
  })

  it('no certificate and no token: CONNACK 4', async () => {
    const before = await refusals('no_credentials')
    expect(
      await connackCode(
        connectWithToken(tb, '', 'bridge:alice:none', 'tls', { username: undefined, password: undefined }),
      ),
    ).toBe(4)
    expect(await refusals('no_credentials')).toBe(before + 1)
  })

  it('a bad token without a certificate: CONNACK 4', async () => {
    const bad = await forge({ role: 'bridge', secret: 'another-secret-0123456789abcdef' })
    expect(await connackCode(connectWithToken(tb, bad, 'bridge:alice:bad', 'tls'))).toBe(4)
  })

  it('a certificate from another CA is refused even with a valid token: CONNACK 5', async () => {
    const foreign = await generateCa('evil CA')
    const c = await issueCertWithCa(foreign.certPem, foreign.keyPem, 'tracker-1')
    const jwt = await token(tb, 'alice', 'bridge')
    const before = await refusals('untrusted_certificate')
    expect(
      await connackCode(connectWithToken(tb, jwt, 'bridge:alice:forged', 'tls', { cert: c.certPem, key: c.keyPem })),
    ).toBe(5)
    expect(tb.pg.principalOf('bridge:alice:forged')).toBeUndefined()
    expect(await refusals('untrusted_certificate')).toBe(before + 1)
  })

  it('an expired certificate of the device CA is refused even with a valid token: CONNACK 5', async () => {
    const p = pkiPaths(path.join(tb.dataDir, 'pki'))
    const c = await issueCertWithCa(fs.readFileSync(p.caCert, 'utf8'), fs.readFileSync(p.caKey, 'utf8'), 'tracker-1', {
      notBefore: new Date(Date.now() - 10 * 86400_000),
      notAfter: new Date(Date.now() - 86400_000),
    })
    const jwt = await token(tb, 'alice', 'bridge')
    const before = await refusals('certificate_expired')
    expect(
      await connackCode(connectWithToken(tb, jwt, 'bridge:alice:expired', 'tls', { cert: c.certPem, key: c.keyPem })),
    ).toBe(5)
    expect(await refusals('certificate_expired')).toBe(before + 1)
  })

  it('a tracker with its valid certificate is a device there too, and still on 8883', async () => {
    const viaToken = await mqtt.connectAsync(`mqtts://127.0.0.1:${tb.pg.ports.mqttsToken}`, {
      clientId: 'tracker-1',
      cert: dev.cert,
      key: dev.key,
      ca: tb.ca,
      servername: 'localhost',
      reconnectPeriod: 0,
      connectTimeout: 15_000,
    })
    expect(tb.pg.principalOf('tracker-1')).toMatchObject({ role: 'device', deviceId: 'tracker-1', userId: 'alice' })
    await viaToken.endAsync()
    const c = await connectDevice(tb, dev)
    expect(tb.pg.principalOf('tracker-1')).toMatchObject({ role: 'device', deviceId: 'tracker-1' })
    await c.endAsync()
  })

  it('8883 still refuses a token client without a certificate in the handshake', async () => {
    expect(await handshakeFails({})).toMatch(/certificate|closed|alert/i)
  })
})

describe('tokens (JWT)', () => {
  it('valid app token as MQTT password over TCP', async () => {
    const c = await connectWithToken(tb, await token(tb, 'alice', 'app'), 'app:alice:phone')
    expect(tb.pg.principalOf('app:alice:phone')).toMatchObject({ role: 'app', userId: 'alice' })
    await c.endAsync()
  })

  it('valid token in the Authorization header of the WebSocket upgrade', async () => {
    const c = await connectWithToken(tb, await token(tb, 'alice', 'app'), 'app:alice', 'ws-header')
    expect(c.connected).toBe(true)
    await c.endAsync()
  })

  it('valid token as password over WebSocket', async () => {
    const c = await connectWithToken(tb, await token(tb, 'bob', 'bridge'), 'bridge:bob:1', 'ws')
    expect(tb.pg.principalOf('bridge:bob:1')?.role).toBe('bridge')
    await c.endAsync()
  })

  it('expired token: CONNACK 4', async () => {
    const now = Math.floor(Date.now() / 1000)
    const jwt = await forge({ iat: now - 7200, exp: now - 3600 })
    expect(await connackCode(connectWithToken(tb, jwt, 'app:alice'))).toBe(4)
  })

  it('wrong signature: CONNACK 4', async () => {
    const jwt = await forge({ secret: 'another-secret-0123456789abcdef' })
    expect(await connackCode(connectWithToken(tb, jwt, 'app:alice'))).toBe(4)
  })

  it('wrong audience: CONNACK 4', async () => {
    const jwt = await forge({ aud: 'someone-else' })
    expect(await connackCode(connectWithToken(tb, jwt, 'app:alice'))).toBe(4)
  })

  it('a role tokens cannot have (device): CONNACK 5', async () => {
    const jwt = await forge({ role: 'device', sub: 'tracker-1' })
    expect(await connackCode(connectWithToken(tb, jwt, 'device:tracker-1'))).toBe(5)
  })

  it('no credentials at all: CONNACK 4', async () => {
    expect(
      await connackCode(
        mqtt.connectAsync(`mqtt://127.0.0.1:${tb.pg.ports.mqtt}`, { reconnectPeriod: 0, clientId: 'x' }),
      ),
    ).toBe(4)
  })

  it("another user's client id namespace: CONNACK 2 (no session takeover)", async () => {
    expect(await connackCode(connectWithToken(tb, await token(tb, 'mallory', 'app'), 'app:alice:phone'))).toBe(2)
    expect(await connackCode(connectWithToken(tb, await token(tb, 'mallory', 'app'), 'tracker-1'))).toBe(2)
  })

  it('a bad bearer token at the WebSocket upgrade is refused with HTTP 401, before MQTT', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${tb.pg.ports.http}/mqtt`, 'mqtt', {
        headers: { Authorization: 'Bearer not-a-jwt' },
      })
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
      ws.on('open', () => reject(new Error('upgrade accepted with a bad token')))
      ws.on('error', () => {})
    })
    expect(status).toBe(401)
    const metrics = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_auth_refusals_total')
    expect(metrics).toMatch(/reason="malformed",listener="ws"/)
  })
})

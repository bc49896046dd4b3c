// deploy/: the HAProxy and Prometheus configs check clean, and a real HAProxy from deploy/haproxy.cfg in front of a
// real pulsegate: mTLS passthrough with PROXY v2 keeps the client's address and port; TLS terminated at HAProxy
// authenticates the device by the certificate identity in the PROXY v2 TLVs (registered fingerprint still checked);
// PROXY headers from anyone but the load balancer are refused; WebSocket apps pass; HAProxy's health check is
// /readyz, which turns false while Redis is gone past its bound.
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import type { Client } from 'aedes'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { initPki, issueDeviceCert, pkiPaths } from '../../src/identity/pki.js'
import { clientAddress, connInfo } from '../../src/transport/connection.js'
import {
  buildSslTlv,
  buildV2Header,
  PP2_CLIENT_CERT_CONN,
  PP2_CLIENT_SSL,
  PP2_TYPE_SSL,
  PP2_TYPE_UNIQUE_ID,
} from '../../src/transport/proxy-protocol.js'
import { checkHaproxyConfig, type Haproxy, haproxyEnv, startHaproxy } from '../helpers/haproxy.js'
import {
  connackCode,
  provisionDevice,
  REDIS_URL,
  startTestBroker,
  type TestBroker,
  token,
  tempDir,
  waitFor,
} from '../helpers/harness.js'
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js'

const LB_SOURCE = '127.0.0.2' // HAProxy connects from here; the test's own clients come from 127.0.0.1
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..')

function run(cmd: string, args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: root }, (err, stdout, stderr) =>
      resolve({ code: err ? 1 : 0, output: `${stdout}${stderr}` }),
    )
  })
}

describe('deploy configs', () => {
  it('promtool accepts deploy/prometheus/prometheus.yml and its alert rules', async () => {
    const config = await run('promtool', ['check', 'config', 'deploy/prometheus/prometheus.yml'])
    expect(config.output).toContain('SUCCESS')
    expect(config.code).toBe(0)
    const rules = await run('promtool', ['check', 'rules', 'deploy/prometheus/alerts.yml'])
    expect(rules.output).toContain('SUCCESS')
    expect(rules.code).toBe(0)
  })

  it('haproxy -c accepts deploy/haproxy.cfg (and refuses a broken copy)', async () => {
    const dir = tempDir('pulsegate-lbcheck-')
    await initPki(path.join(dir, 'pki'))
    const p = pkiPaths(path.join(dir, 'pki'))
    const pem = path.join(dir, 'server.pem')
    fs.writeFileSync(
      pem,
      `${fs.readFileSync(p.serverCert, 'utf8').trim()}\n${fs.readFileSync(p.serverKey, 'utf8').trim()}\n`,
    )
    const env = haproxyEnv(
      { host: '127.0.0.1', mqtt: 1, mqtts: 2, http: 3, source: LB_SOURCE, tlsPem: pem, deviceCa: p.caCert, dir },
      { mqtt: 4, mqtts: 5, mqttsTerminated: 6, ws: 7, stats: 8 },
    )
    const ok = await checkHaproxyConfig(env)
    expect(ok.output).toContain('Configuration file is valid')
    expect(ok.code).toBe(0)
    const bad = await checkHaproxyConfig({ ...env, LB_DEVICE_CA: path.join(dir, 'missing.crt') })
    expect(bad.code).not.toBe(0)
  })
})

describe('pulsegate behind a real HAProxy', () => {
  let tb: TestBroker
  let lb: Haproxy
  let redis: TcpProxy
  let ca: Buffer
  const clients: MqttClient[] = []

  beforeAll(async () => {
    redis = await startTcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379))
    tb = await startTestBroker('postgres', {
      redisUrl: `redis://127.0.0.1:${redis.port}`,
      node: { name: 'edge-test-node' },
      proxy: {
        mqtt: 'required',
        mqtts: 'required',
        http: 'optional',
        trusted: [`${LB_SOURCE}/32`],
        tlsIdentity: true,
      },
      readiness: { redisDownMs: 300 },
    })
    const p = pkiPaths(path.join(tb.dataDir, 'pki'))
    ca = fs.readFileSync(p.caCert)
    const pem = path.join(tb.dataDir, 'lb-server.pem')
    fs.writeFileSync(
      pem,
      `${fs.readFileSync(p.serverCert, 'utf8').trim()}\n${fs.readFileSync(p.serverKey, 'utf8').trim()}\n`,
    )
    lb = await startHaproxy({
      host: '127.0.0.1',
      mqtt: tb.pg.ports.mqtt as number,
      mqtts: tb.pg.ports.mqtts as number,
      http: tb.pg.ports.http,
      source: LB_SOURCE,
      tlsPem: pem,
      deviceCa: p.caCert,
      dir: tb.dataDir,
    })
    // Every backend's servers pass their /readyz check before traffic is sent.
    const servers = async () =>
      (await lb.stat()).filter((r) => r.backend.startsWith('pulsegate_') && r.server.startsWith('node'))
    await waitFor(async () => {
      const rows = await servers()
      return rows.length === 12 && rows.every((r) => r.status === 'UP')
    }, 30_000).catch(async (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(await servers().catch(() => []))}\n${lb.output()}`)
    })
  }, 60_000)

  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => {})
    await lb?.stop()
    await tb?.stop()
    await redis?.close()
  })

  const clientsById = () => (tb.pg.broker as unknown as { clients: Record<string, Client | undefined> }).clients
  const refusals = async (reason: string, listener: string) => {
    const m = (await tb.pg.metrics.registry.getSingleMetric('pulsegate_proxy_refusals_total')?.get())?.values ?? []
    return m.find((v) => v.labels.reason === reason && v.labels.listener === listener)?.value ?? 0
  }

  it('mTLS through HAProxy passthrough: accepted, and the recorded address is the client socket', async () => {
    const dev = await provisionDevice(tb, 'lb-pass-1', 'lb-user-1')
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${lb.ports.mqtts}`, {
      clientId: dev.deviceId,
      cert: dev.cert,
      key: dev.key,
      ca,
      servername: 'localhost',
      reconnectPeriod: 0,
      protocolVersion: 4,
    })
    clients.push(c)
    const localPort = (c.stream as net.Socket).localPort
    const client = await waitFor(() => clientsById()[dev.deviceId])
    expect(clientAddress(client)).toEqual({ address: '127.0.0.1', port: localPort })
    const info = connInfo(client.conn)
    expect(info?.listener).toBe('mqtts')
    expect(info?.via?.address).toBe(LB_SOURCE)
    expect(info?.certFromLb).toBe(false)
    const details = (client as unknown as { connDetails: { ipAddress: string; port: number; isProxy: number } })
      .connDetails
    expect(details).toMatchObject({ ipAddress: '127.0.0.1', port: localPort, isProxy: 2 })
    // The pipeline behind it works as direct: a QoS 1 reading is committed before its PUBACK.
    await c.publishAsync(
      `devices/${dev.deviceId}/readings`,
      JSON.stringify({ seq: 1, samples: [{ t: Date.now() - 1000, hr: 71 }] }),
      { qos: 1 },
    )
    const rows = await tb.pg.db.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM samples s JOIN devices d ON d.device_key = s.device_key WHERE d.device_id = $1`,
      [dev.deviceId],
    )
    expect(rows.rows[0]?.n).toBe('1')
  })

  it('TLS terminated at HAProxy: the device is authenticated by the certificate identity in the PROXY v2 TLVs', async () => {
    const dev = await provisionDevice(tb, 'lb-term-1', 'lb-user-2')
    const c = await mqtt.connectAsync(`mqtts://127.0.0.1:${lb.ports.mqttsTerminated}`, {
      clientId: dev.deviceId,
      cert: dev.cert,
      key: dev.key,
      ca,
      servername: 'localhost',
      reconnectPeriod: 0,
      protocolVersion: 4,
    })
    clients.push(c)
    const localPort = (c.stream as net.Socket).localPort
    const client = await waitFor(() => clientsById()[dev.deviceId])
    const info = connInfo(client.conn)
    expect(info?.listener).toBe('mqtt')
    expect(info?.certFromLb).toBe(true)
    expect(info?.peerCert?.fingerprint256).toBe(dev.fingerprint)
    expect(clientAddress(client)).toEqual({ address: '127.0.0.1', port: localPort })
    expect(tb.pg.principalOf(dev.deviceId)).toMatchObject({ role: 'device', deviceId: dev.deviceId })
  })

  it('TLS terminated at HAProxy: a CA-signed but unregistered certificate, or another device’s, is refused', async () => {
    const unregistered = await issueDeviceCert(path.join(tb.dataDir, 'pki'), 'lb-term-unknown')
    const opts = {
      cert: unregistered.certPem,
      key: unregistered.keyPem,
      ca,
      servername: 'localhost',
      reconnectPeriod: 0,
      protocolVersion: 4 as const,
    }
    const url = `mqtts://127.0.0.1:${lb.ports.mqttsTerminated}`
    expect(await connackCode(mqtt.connectAsync(url, { ...opts, clientId: 'lb-term-unknown' }))).toBe(5)
    // Registered device id, but this certificate is not its registered one: the fingerprint check holds.
    await provisionDevice(tb, 'lb-term-2', 'lb-user-3')
    const second = await issueDeviceCert(path.join(tb.dataDir, 'pki'), 'lb-term-2')
    expect(
      await connackCode(
        mqtt.connectAsync(url, { ...opts, cert: second.certPem, key: second.keyPem, clientId: 'lb-term-2' }),
      ),
    ).toBe(5)
    expect(clientsById()['lb-term-2']).toBeUndefined()
  })

  it('a PROXY header from an address that is not the load balancer is refused, counted', async () => {
    const header = buildV2Header({
      addresses: {
        family: 'IPv4',
        sourceAddress: '203.0.113.9',
        sourcePort: 4242,
        destAddress: '127.0.0.1',
        destPort: 1,
      },
    })
    const closed = (port: number) =>
      new Promise<boolean>((resolve) => {
        const s = net.connect(port, '127.0.0.1', () =>
          s.write(Buffer.concat([header, Buffer.from('GET /readyz HTTP/1.1\r\n\r\n')])),
        )
        let data = ''
        s.on('data', (d) => {
          data += d.toString()
        })
        s.on('error', () => {})
        s.on('close', () => resolve(data === ''))
      })
    const mqttBefore = await refusals('untrusted_source', 'mqtt')
    const httpBefore = await refusals('untrusted_header', 'http')
    expect(await closed(tb.pg.ports.mqtt as number)).toBe(true) // required: nobody but the LB
    expect(await closed(tb.pg.ports.http)).toBe(true) // optional: direct clients fine, forged headers not
    await waitFor(async () => (await refusals('untrusted_source', 'mqtt')) === mqttBefore + 1)
    await waitFor(async () => (await refusals('untrusted_header', 'http')) === httpBefore + 1)
    // A direct HTTP client without a header is still served (Prometheus scrapes the nodes directly).
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/metrics`)
    expect(res.status).toBe(200)
    expect(await res.text()).toContain('node="edge-test-node"')
  })

  it('from the load balancer’s address: no header on a required listener, or an unverified certificate claim, is refused', async () => {
    const closedFromLb = (bytes: Buffer) =>
      new Promise<boolean>((resolve) => {
        const s = net.connect({ port: tb.pg.ports.mqtt as number, host: '127.0.0.1', localAddress: LB_SOURCE }, () =>
          s.write(bytes),
        )
        let data = ''
        s.on('data', (d) => {
          data += d.toString()
        })
        s.on('error', () => {})
        s.on('close', () => resolve(data === ''))
      })
    // An MQTT CONNECT (client id "x", MQTT 3.1.1) with no PROXY header in front of it.
    const connect = Buffer.from([0x10, 13, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2, 0, 60, 0, 1, 0x78])
    const missing = await refusals('missing_header', 'mqtt')
    expect(await closedFromLb(connect)).toBe(true)
    await waitFor(async () => (await refusals('missing_header', 'mqtt')) === missing + 1)
    // A client certificate the balancer says it could not verify (verify = 1) never becomes an identity.
    const unverified = buildV2Header({
      addresses: {
        family: 'IPv4',
        sourceAddress: '127.0.0.1',
        sourcePort: 5555,
        destAddress: '127.0.0.1',
        destPort: 1,
      },
      tlvs: [
        [PP2_TYPE_UNIQUE_ID, Buffer.from('ab'.repeat(32))],
        [PP2_TYPE_SSL, buildSslTlv({ client: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, verify: 1, cn: 'lb-pass-1' })],
      ],
    })
    const before = await refusals('lb_certificate_unverified', 'mqtt')
    expect(await closedFromLb(Buffer.concat([unverified, connect]))).toBe(true)
    await waitFor(async () => (await refusals('lb_certificate_unverified', 'mqtt')) === before + 1)
  })

  it('a WebSocket app through HAProxy connects and is recorded with its own address', async () => {
    const jwt = await token(tb, 'lb-app-user', 'app')
    const c = await mqtt.connectAsync(`ws://127.0.0.1:${lb.ports.ws}/mqtt`, {
      clientId: 'app:lb-app-user:phone',
      wsOptions: { headers: { Authorization: `Bearer ${jwt}` } },
      reconnectPeriod: 0,
      protocolVersion: 4,
    })
    clients.push(c)
    const granted = await c.subscribeAsync('users/lb-app-user/alerts', { qos: 1 })
    expect(granted[0]?.qos).toBe(1)
    const client = await waitFor(() => clientsById()['app:lb-app-user:phone'])
    const info = connInfo(client.conn)
    expect(info?.listener).toBe('ws')
    expect(info?.remoteAddress).toBe('127.0.0.1')
    expect(info?.via?.address).toBe(LB_SOURCE)
  })

  it('HAProxy health-checks /readyz: Redis gone past the bound takes the node out, back when Redis returns', async () => {
    const nodes = async () =>
      (await lb.stat()).filter((r) => r.backend === 'pulsegate_ws' && r.server.startsWith('node'))
    redis.cut()
    const ready = await waitFor(async () => {
      const r = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/readyz`)
      return r.status === 503 ? ((await r.json()) as { redis: boolean }) : null
    }, 20_000)
    expect(ready.redis).toBe(false)
    await waitFor(async () => (await nodes()).every((r) => r.status.startsWith('DOWN')), 30_000)
    redis.restore()
    await waitFor(async () => (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/readyz`)).status === 200, 30_000)
    await waitFor(async () => (await nodes()).every((r) => r.status === 'UP'), 30_000)
  }, 90_000)
})
